"""fedloop: federated learning that is exact, fast to simulate and simple to read.

The Python API in a few names:

    import fedloop
    data = fedloop.load_dataset("digits")
    part = fedloop.make_partition(data, "dirichlet", num_clients=20, seed=0, alpha=0.5)
    result = fedloop.simulate(lambda: MyNet(), data, part, fedloop.FedAvg(clients_per_round=10), rounds=20)
    result.history, result.model
"""

from .config import Config, load_config
from .data import Dataset, Examples, Partition, load_dataset, make_partition
from .errors import (
    AggregationError,
    CheckpointError,
    ConfigError,
    DataError,
    FedloopError,
    PrivacyBudgetExhausted,
    TransportError,
)
from .experiment import RunResult, load_model, run_config, simulate
from .models import build_model
from .sim import LocalFleet, gaussian_population, make_fleet
from .strategies import FedAvg, FedProx, FedSGD, LocalSGD, Scaffold, SGDProgram, Strategy, make_strategy

__version__ = "0.1.0"

__all__ = [
    "AggregationError", "CheckpointError", "Config", "ConfigError", "DataError", "Dataset", "Examples",
    "FedAvg", "FedProx", "FedSGD", "FedloopError", "LocalFleet", "LocalSGD", "Partition", "Scaffold",
    "PrivacyBudgetExhausted", "RunResult", "SGDProgram", "Strategy", "TransportError", "build_model",
    "gaussian_population", "load_config", "load_dataset", "load_model", "make_fleet", "make_partition",
    "make_strategy", "run_config", "simulate",
]
