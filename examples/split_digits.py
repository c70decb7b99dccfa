"""Write N clients' data files and a server held-out file from scikit-learn's digits, for the deployment
quick start in the README:  python examples/split_digits.py DIR N"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import fedloop


def main() -> None:
    out, n = Path(sys.argv[1]), int(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    data = fedloop.load_dataset("digits")
    part = fedloop.make_partition(data, "dirichlet", n, seed=0, alpha=1.0, local_test_fraction=0.2)
    for c in range(n):
        train, test = part.train[c], part.test[c]
        np.savez(out / f"client{c}.npz", x_train=data.x_train[train].numpy(), y_train=data.y_train[train].numpy(),
                 x_test=data.x_train[test].numpy(), y_test=data.y_train[test].numpy())
    np.savez(out / "server.npz", x_train=data.x_train[:1].numpy(), y_train=data.y_train[:1].numpy(),
             x_test=data.x_test.numpy(), y_test=data.y_test.numpy())
    print(f"wrote {n} client files and server.npz to {out}")


if __name__ == "__main__":
    main()
