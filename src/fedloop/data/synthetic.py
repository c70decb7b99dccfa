"""Synthetic(alpha, beta) of the FedProx paper (Li et al. 2020): heterogeneous softmax-regression devices.

Device k: u_k ~ N(0, alpha), W_k ~ N(u_k, 1) (10x60), b_k ~ N(u_k, 1); B_k ~ N(0, beta), v_k ~ N(B_k, 1)
(60-dim), x ~ N(v_k, Sigma) with Sigma_jj = j^-1.2, y = argmax(softmax(W_k x + b_k)). Sample counts follow
a lognormal law. Each device is a natural client; 20% of its rows form its test split.
"""

from __future__ import annotations

import numpy as np
import torch

from .examples import Dataset

DIM, CLASSES = 60, 10


def make_synthetic(alpha: float, beta: float, num_users: int, seed: int, iid: bool = False,
                   test_fraction: float = 0.2) -> Dataset:
    rng = np.random.default_rng([seed, 0xFED, 0x9]) if not iid else np.random.default_rng([seed, 0x11D])
    counts = (rng.lognormal(4, 2, num_users).astype(int) + 50).clip(max=5000)
    sigma = np.arange(1, DIM + 1, dtype=np.float64) ** -1.2
    w_shared, b_shared = rng.normal(0, 1, (DIM, CLASSES)), rng.normal(0, 1, CLASSES)
    parts: dict[str, list[np.ndarray]] = {"xtr": [], "ytr": [], "utr": [], "xte": [], "yte": [], "ute": []}
    for k in range(num_users):
        if iid:
            w, b, v = w_shared, b_shared, np.zeros(DIM)
        else:
            u = rng.normal(0, np.sqrt(alpha))
            w, b = rng.normal(u, 1, (DIM, CLASSES)), rng.normal(u, 1, CLASSES)
            v = rng.normal(rng.normal(0, np.sqrt(beta)), 1, DIM)
        x = rng.normal(v, np.sqrt(sigma), (counts[k], DIM))
        y = np.argmax(x @ w + b, axis=1)
        n_test = max(1, int(round(counts[k] * test_fraction)))
        for key, sl in (("tr", slice(n_test, None)), ("te", slice(0, n_test))):
            parts["x" + key].append(x[sl])
            parts["y" + key].append(y[sl])
            parts["u" + key].append(np.full(len(y[sl]), k))
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    return Dataset(
        f"synthetic({alpha},{beta})",
        torch.from_numpy(cat["xtr"].astype(np.float32)), torch.from_numpy(cat["ytr"].astype(np.int64)),
        torch.from_numpy(cat["xte"].astype(np.float32)), torch.from_numpy(cat["yte"].astype(np.int64)),
        CLASSES, train_users=cat["utr"], test_users=cat["ute"])
