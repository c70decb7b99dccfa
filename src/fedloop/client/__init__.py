"""The client side: the client app (one code path in every mode), local training, evaluation, client state."""

from .app import ClientApp
from .evaluate import Tally, evaluate
from .program import LossFn, Penalty, SGDProgram, sgd_step
from .state import ClientState, DiskStates, MemoryStates, RoundStates, StateStore
from .training import (
    ClientContext,
    FullGradient,
    LocalSGD,
    LocalSpec,
    Trained,
    full_gradient,
    train_program,
)

__all__ = ["ClientApp", "ClientContext", "ClientState", "DiskStates", "FullGradient", "LocalSGD", "LocalSpec",
           "LossFn", "MemoryStates", "Penalty", "RoundStates", "SGDProgram", "StateStore", "Tally", "Trained",
           "evaluate", "full_gradient", "sgd_step", "train_program"]
