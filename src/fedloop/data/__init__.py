"""Datasets (readers for real formats, generators) and partitions over clients."""

from .examples import Dataset, Examples
from .partition import SCHEMES, Partition, make_partition
from .registry import DATASETS, load_dataset

__all__ = ["DATASETS", "SCHEMES", "Dataset", "Examples", "Partition", "load_dataset", "make_partition"]
