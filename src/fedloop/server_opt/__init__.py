"""Server optimizers (a strategy part), looked up by name: sgd, adam, yogi, adagrad."""

from .adaptive import Adagrad, Adam, Yogi
from .base import OptState, ServerOptimizer
from .sgd import SGD

SERVER_OPTIMIZERS: dict[str, type] = {cls.name: cls for cls in (SGD, Adam, Yogi, Adagrad)}

__all__ = ["SERVER_OPTIMIZERS", "SGD", "Adagrad", "Adam", "OptState", "ServerOptimizer", "Yogi"]
