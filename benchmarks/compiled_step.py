"""What torch.compile would buy the vectorized executor's batched step, on W3's shapes (issue 24).

One batched SGD step for 100 clients of softmax regression (60 features, 10 classes, batches of 10): the gather of
the clients' rows, vmap(grad(loss)) over the clients and the SGD update. It prints the step's time eager, compiled
with static shapes and compiled with dynamic shapes (and how long each compile took), and the largest difference
of the updated params from the eager ones. Needs a C++ compiler for inductor; without one it says so.

    python benchmarks/compiled_step.py
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

CLIENTS, BATCH, FEATURES, CLASSES, ROWS = 100, 10, 60, 10, 50_000


def main() -> None:
    torch.manual_seed(0)
    model = nn.Linear(FEATURES, CLASSES)
    x, y = torch.randn(ROWS, FEATURES), torch.randint(0, CLASSES, (ROWS,))
    rows, mask = torch.randint(0, ROWS, (CLIENTS, BATCH)), torch.ones(CLIENTS, BATCH)
    params = {"weight": torch.randn(CLIENTS, CLASSES, FEATURES) * 0.1, "bias": torch.zeros(CLIENTS, CLASSES)}

    def client_loss(p: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor,
                    mb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = functional_call(model, p, (xb,))
        return (F.cross_entropy(out, yb, reduction="none") * mb).sum() / mb.sum(), out

    def step(p: dict[str, torch.Tensor], rows: torch.Tensor,
             mask: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        xb = x.index_select(0, rows.reshape(-1)).view(*rows.shape, FEATURES)
        yb = y.index_select(0, rows.reshape(-1)).view(rows.shape)
        g, out = vmap(grad(client_loss, has_aux=True))(p, xb, yb, mask)
        return {k: p[k] - 0.05 * g[k] for k in p}, ((out.argmax(2) == yb) * mask).sum(1)

    def per_step(f: Callable, repeats: int = 500) -> float:
        for _ in range(5):
            f(params, rows, mask)
        start = time.perf_counter()
        for _ in range(repeats):
            f(params, rows, mask)
        return (time.perf_counter() - start) / repeats

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {CLIENTS} clients x {BATCH} rows, "
          f"{FEATURES}->{CLASSES} softmax regression")
    print(f"  eager              {per_step(step) * 1e6:8.1f} us per step")
    eager = step(params, rows, mask)[0]
    for dynamic in (False, True):
        compiled = torch.compile(step, dynamic=dynamic)
        start = time.perf_counter()
        try:
            compiled(params, rows, mask)
        except Exception as exc:  # noqa: BLE001 - no toolchain, or an inductor failure: say which
            print(f"  compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
            return
        took = time.perf_counter() - start
        diff = max((compiled(params, rows, mask)[0][k] - eager[k]).abs().max().item() for k in eager)
        print(f"  compiled{' dynamic' if dynamic else ' static '}   {per_step(compiled) * 1e6:8.1f} us per step "
              f"(compiling took {took:.1f} s; largest difference from eager {diff:.1e})")


if __name__ == "__main__":
    main()
