"""fedloop: federated learning that is exact, fast to simulate and simple to read.

The Python API in a few names:

    import fedloop
    data = fedloop.load_dataset("digits")
    part = fedloop.make_partition(data, "dirichlet", num_clients=20, seed=0, alpha=0.5)
    strategy = fedloop.FedAvg(sampler=fedloop.Sampler(clients_per_round=10))
    result = fedloop.simulate(lambda: MyNet(), data, part, strategy, fedloop.RunOptions(rounds=20))
    result.history, result.model
"""

from .aggregators import WeightedMean
from .app import App
from .build import load_config
from .client import ClientApp, FullGradient, LocalSGD, SGDProgram, Trained
from .config import Config
from .data import Dataset, Examples, Partition, load_dataset, make_partition
from .errors import AggregationError, CheckpointError, ConfigError, DataError, FedloopError, TransportError
from .experiment import load_model, run_config, simulate
from .loop import RoundPolicy
from .models import build_model
from .observers import Observer
from .run import CheckpointOptions, EvalOptions, RunOptions, StopOptions
from .sampling import Sampler
from .server_opt import SGD, Adagrad, Adam, Yogi
from .sim import ChaosFleet, LocalFleet, MockFleet, SimOptions, gaussian_population, make_fleet
from .strategies import (
    Ditto,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedBuff,
    FedDyn,
    FedNova,
    FedProx,
    FedSGD,
    FedYogi,
    PowerOfChoice,
    QFedAvg,
    Scaffold,
    Strategy,
    make_strategy,
)
from .transforms import Clip, Transform
from .types import RunResult

__version__ = "0.1.0"

__all__ = [
    "SGD", "Adagrad", "Adam", "AggregationError", "App", "ChaosFleet", "CheckpointError", "CheckpointOptions",
    "ClientApp", "Clip", "Config", "ConfigError", "DataError", "Dataset", "Ditto", "EvalOptions", "Examples",
    "FedAdagrad", "FedAdam", "FedAvg", "FedAvgM", "FedBuff", "FedDyn", "FedNova", "FedProx", "FedSGD", "FedYogi",
    "FedloopError",
    "FullGradient", "LocalFleet", "LocalSGD", "MockFleet", "Observer", "Partition", "PowerOfChoice", "QFedAvg",
    "RoundPolicy", "RunOptions", "RunResult", "SGDProgram", "Sampler", "Scaffold", "SimOptions", "StopOptions",
    "Strategy", "Trained", "Transform", "TransportError", "WeightedMean", "Yogi", "build_model", "gaussian_population",
    "load_config", "load_dataset", "load_model", "make_fleet", "make_partition", "make_strategy", "run_config",
    "simulate"
]
