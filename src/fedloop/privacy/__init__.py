"""Differential privacy: central (DP-FedAvg, fixed or adaptive clipping), local, and sample-level DP-SGD, each a
transform in the shared round path, accounted by dp-accounting."""

from .accountant import Release, epsilon
from .central import CentralDP
from .dpsgd import DPSGD
from .local import LocalDP
from .options import PrivacyOptions, calibrate_noise, privatize

__all__ = ["DPSGD", "CentralDP", "LocalDP", "PrivacyOptions", "Release", "calibrate_noise", "epsilon", "privatize"]
