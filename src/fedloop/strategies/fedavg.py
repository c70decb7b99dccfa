"""FedAvg (McMahan et al. 2017): E epochs of local minibatch SGD, the sample-weighted mean of the pseudo-gradients
W_global - W_local, server SGD. With server lr 1 this is exactly model averaging. It is the base composition
itself: nothing to override."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import Strategy


@dataclass(frozen=True)
class FedAvg(Strategy):
    name: ClassVar[str] = "fedavg"
