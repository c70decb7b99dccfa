"""Partitions: who holds which training rows. Seeded; a row goes to one client at most, and every row does except
under label-quantity skew ("classes"), which leaves out the labels no client draws, as NIID-Bench does.

Each client also gets a local test split for federated evaluation: its own test rows where the data have
natural owners with a test set (LEAF, synthetic), otherwise a seeded hold-out of its partition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..errors import ConfigError
from .examples import Dataset

SCHEMES = ("iid", "dirichlet", "shards", "quantity", "natural", "classes")
BALANCED_MIN = 10
"""The fewest rows a client of a balanced Dirichlet partition holds (NIID-Bench's min_require_size)."""


@dataclass(frozen=True)
class Partition:
    """train[c] are client c's rows of the training arrays; test[c] its local test rows, taken from the
    arrays named by `test_source` ("train": held out of its partition, "test": its own test rows)."""

    scheme: str
    train: list[np.ndarray]
    test: list[np.ndarray]
    test_source: Literal["train", "test"]

    @property
    def num_clients(self) -> int:
        return len(self.train)

    def to_json(self, labels: np.ndarray | None = None, num_classes: int | None = None) -> dict:
        """The partition as partition.json holds it; with the training labels, also each client's row count per
        class (`label_counts`, clients x classes: the dashboard's heatmap)."""
        out: dict = {"scheme": self.scheme, "test_source": self.test_source,
                     "clients": {str(c): {"train": self.train[c].tolist(), "test": self.test[c].tolist()}
                                 for c in range(self.num_clients)}}
        if labels is not None and labels.ndim == 1 and not np.issubdtype(labels.dtype, np.floating):
            out["label_counts"] = label_counts(labels, self.train, num_classes or int(labels.max()) + 1).tolist()
        return out


def _rng(seed: int, tag: int) -> np.random.Generator:
    return np.random.default_rng([seed, 0x9A27, tag])


def iid(n: int, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A random permutation cut into near-equal parts."""
    return [np.sort(p) for p in np.array_split(rng.permutation(n), num_clients)]


def dirichlet(labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator,
              min_size: int = 1, max_tries: int = 1000, balance: bool = False) -> list[np.ndarray]:
    """Label skew: each class is split over clients in proportions drawn from Dirichlet(alpha).
    Redrawn until every client holds at least `min_size` rows. With `balance` (NIID-Bench's rule, Li et al. 2022),
    a client that already holds n / num_clients rows or more gets none of the classes still to split."""
    classes = np.unique(labels)
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    cap = len(labels) / num_clients
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        held = np.zeros(num_clients)
        for idx in by_class:
            p = rng.dirichlet(np.full(num_clients, alpha))
            if balance:
                p = p * (held < cap)
                p = p / p.sum()
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(int)
            for c, chunk in enumerate(np.split(idx, cuts)):
                parts[c].append(chunk)
                held[c] += len(chunk)
        out = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in out) >= min_size:
            return out
    raise ConfigError(f"partition.alpha = {alpha}: could not give each of {num_clients} clients "
                      f"{min_size} row(s) in {max_tries} draws; raise alpha or lower num_clients")


def shards(labels: np.ndarray, num_clients: int, per_client: int, rng: np.random.Generator
           ) -> list[np.ndarray]:
    """The FedAvg paper's pathological non-IID split: sort by label, cut into num_clients * per_client
    shards, give each client `per_client` random shards."""
    n_shards = num_clients * per_client
    if n_shards > len(labels):
        raise ConfigError(f"partition.shards_per_client = {per_client} with {num_clients} clients needs "
                          f"{n_shards} shards but there are only {len(labels)} rows")
    order = rng.permutation(len(labels))
    order = order[np.argsort(labels[order], kind="stable")]
    pieces = np.array_split(order, n_shards)
    assign = rng.permutation(n_shards).reshape(num_clients, per_client)
    return [np.sort(np.concatenate([pieces[s] for s in row])) for row in assign]


def classes(labels: np.ndarray, num_clients: int, per_client: int, rng: np.random.Generator) -> list[np.ndarray]:
    """NIID-Bench's label-quantity skew (#C = k; Li et al., ICDE 2022): client i holds label i mod K and k - 1 other
    labels drawn at random without repeats; each label's rows are shuffled and split equally among the clients that
    hold it (labels that nobody holds are left out)."""
    values = np.unique(labels)
    k = len(values)
    if not 1 <= per_client <= k:
        raise ConfigError(f"partition.classes_per_client = {per_client} must be between 1 and the data's {k} classes")
    held: list[list[int]] = []
    for i in range(num_clients):
        mine = [i % k]
        while len(mine) < per_client:
            c = int(rng.integers(k))
            if c not in mine:
                mine.append(c)
        held.append(mine)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for c in range(k):
        holders = [i for i in range(num_clients) if c in held[i]]
        if not holders:
            continue
        rows = rng.permutation(np.flatnonzero(labels == values[c]))
        for i, chunk in zip(holders, np.array_split(rows, len(holders)), strict=True):
            parts[i].append(chunk)
    out = [np.sort(np.concatenate(p)) for p in parts]
    if (empty := [i for i, p in enumerate(out) if len(p) == 0]):
        raise ConfigError(f"partition.classes_per_client = {per_client}: client {empty[0]} gets no rows (its labels "
                          f"have fewer rows than clients holding them); use fewer clients")
    return out


def quantity(n: int, num_clients: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Quantity skew: IID labels, client sizes in proportions drawn from Dirichlet(alpha), at least 1 row each."""
    if n < num_clients:
        raise ConfigError(f"partition.num_clients = {num_clients} exceeds the {n} training rows")
    p = rng.dirichlet(np.full(num_clients, alpha))
    sizes = 1 + np.floor(p * (n - num_clients)).astype(int)
    sizes[np.argsort(-p, kind="stable")[: n - sizes.sum()]] += 1
    return [np.sort(c) for c in np.split(rng.permutation(n), np.cumsum(sizes)[:-1])]


def natural(users: np.ndarray, num_clients: int | None, rng: np.random.Generator
            ) -> tuple[list[np.ndarray], np.ndarray]:
    """One client per natural owner (a random `num_clients` of them when that is fewer); returns the rows
    of each chosen user and the chosen user ids."""
    ids = np.unique(users)
    if num_clients is not None and num_clients < len(ids):
        ids = np.sort(rng.choice(ids, size=num_clients, replace=False))
    return [np.flatnonzero(users == u) for u in ids], ids


def hold_out(parts: list[np.ndarray], fraction: float, rng: np.random.Generator
             ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Move a seeded `fraction` of each client's rows to its local test split (none from 1-row clients)."""
    train, test = [], []
    for rows in parts:
        k = int(round(len(rows) * fraction)) if len(rows) > 1 else 0
        perm = rng.permutation(rows)
        test.append(np.sort(perm[:k]))
        train.append(np.sort(perm[k:]))
    return train, test


def make_partition(data: Dataset, scheme: str, num_clients: int, seed: int, *, alpha: float = 0.5,
                   shards_per_client: int = 2, classes_per_client: int = 2, local_test_fraction: float = 0.1,
                   balance: bool = False) -> Partition:
    """Partition `data`'s training rows over clients with the named scheme."""
    labels = data.y_train.numpy()
    if scheme not in SCHEMES:
        raise ConfigError(f"partition.scheme = {scheme!r} is unknown; allowed: {', '.join(SCHEMES)}")
    if num_clients < 1:
        raise ConfigError(f"partition.num_clients = {num_clients} must be at least 1")
    if scheme != "natural" and num_clients > len(labels):
        raise ConfigError(f"partition.num_clients = {num_clients} exceeds the {len(labels)} training rows")
    rng = _rng(seed, SCHEMES.index(scheme))
    if scheme == "natural":
        if data.train_users is None:
            raise ConfigError(f"partition.scheme = 'natural' needs data with natural owners "
                              f"(femnist, shakespeare, sent140, synthetic); {data.name!r} has none")
        parts, ids = natural(data.train_users, num_clients, rng)
        if data.test_users is not None:
            test = [np.flatnonzero(data.test_users == u) for u in ids]
            return Partition(scheme, parts, test, "test")
    elif scheme == "iid":
        parts = iid(len(labels), num_clients, rng)
    elif scheme == "dirichlet":
        if alpha <= 0:
            raise ConfigError(f"partition.alpha = {alpha} must be > 0")
        parts = dirichlet(labels, num_clients, alpha, rng, min_size=BALANCED_MIN if balance else 1, balance=balance)
    elif scheme == "shards":
        if shards_per_client < 1:
            raise ConfigError(f"partition.shards_per_client = {shards_per_client} must be at least 1")
        parts = shards(labels, num_clients, shards_per_client, rng)
    elif scheme == "classes":
        parts = classes(labels, num_clients, classes_per_client, rng)
    else:
        if alpha <= 0:
            raise ConfigError(f"partition.alpha = {alpha} must be > 0")
        parts = quantity(len(labels), num_clients, alpha, rng)
    if not 0 <= local_test_fraction < 1:
        raise ConfigError(f"partition.local_test_fraction = {local_test_fraction} must be in [0, 1)")
    train, test = hold_out(parts, local_test_fraction, _rng(seed, 99))
    return Partition(scheme, train, test, "train")


def label_counts(labels: np.ndarray, rows: list[np.ndarray], num_classes: int) -> np.ndarray:
    """clients x classes matrix of row counts."""
    return np.stack([np.bincount(labels[r], minlength=num_classes) for r in rows]) if rows else \
        np.zeros((0, num_classes), dtype=int)

