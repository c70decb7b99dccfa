"""Shared test helpers: small data, hand-made partitions, a small model, and short runs."""

import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fedloop import RunOptions, SimOptions, simulate
from fedloop.data.examples import Dataset
from fedloop.data.partition import Partition
from fedloop.run import EvalOptions
from fedloop.sim.mock import DropAt  # noqa: F401 - for the tests that import it from here

RTOL, ATOL = 1e-5, 1e-6  # executors agree to float32 rounding of a different summation order

PR_SET_CHILD_SUBREAPER = 36
# Orphans of the processes a test starts (a client whose parent died, a pool worker left behind) are re-parented to
# this process instead of init, so that the guard below sees every process a test left, however deep it was.
ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def live_children() -> dict[int, str]:
    """This process's live (not zombie) child processes: pid -> command line."""
    me, found = os.getpid(), {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue  # ended meanwhile
        state, ppid = text[text.rindex(")") + 2:].split()[:2]
        if int(ppid) == me and state != "Z":
            found[int(stat.parent.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return found


def end_leftovers(before: dict[int, str], grace: float = 10.0) -> dict[int, str]:
    """Processes started since `before` that are still alive after `grace` seconds, ended by pid (SIGKILL)."""
    deadline = time.monotonic() + grace
    while (left := {p: c for p, c in live_children().items() if p not in before}) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    return left


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked gpu are skipped, saying why, on a machine without a CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=f"no CUDA device here (torch.cuda.is_available() is False; PyTorch "
                                   f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'})")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def no_process_left_behind() -> Iterator[None]:
    """A test that starts processes (servers, clients, CLI runs, pools) ends them: one still alive at teardown
    fails the test, and is ended by pid so it cannot linger (or hold a port) after the test run."""
    before = live_children()
    yield
    left = end_leftovers(before)
    assert not left, f"processes left running by this test (ended now): {left}"


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in its own temporary directory, so a default output path (runs/...) lands there."""
    monkeypatch.chdir(tmp_path)


REPO = Path(__file__).resolve().parent.parent
CACHES = ("__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache", ".hypothesis")


def repo_files() -> set[str]:
    """Files in the repository that git does not track (ignored ones included), caches aside."""
    proc = subprocess.run(["git", "-C", str(REPO), "ls-files", "--others", "--ignored", "--exclude-standard",
                           "--directory", "--no-empty-directory"], capture_output=True, text=True)
    return {line for line in proc.stdout.splitlines() if not any(c in line.split("/") for c in CACHES)}


@pytest.fixture(autouse=True, scope="session")
def nothing_written_into_the_repository() -> Iterator[None]:
    """Tests write under their temporary directories only."""
    before = repo_files()
    yield
    assert not repo_files() - before, f"the tests wrote into the repository: {sorted(repo_files() - before)}"


@pytest.fixture(autouse=True, scope="session")
def no_process_left_by_the_session() -> Iterator[None]:
    """The same for module fixtures (a local Ray cluster): nothing is left when the tests end."""
    before = live_children()
    yield
    left = end_leftovers(before, grace=30.0)
    assert not left, f"processes left running by the test session (ended now): {left}"


def blobs(n_train: int = 120, n_test: int = 40, dim: int = 5, classes: int = 3, seed: int = 0) -> Dataset:
    """Small Gaussian-blob classification data (separable enough to learn in a few rounds)."""
    g = np.random.default_rng(seed)
    centers = g.normal(0, 3, (classes, dim))
    y = g.integers(0, classes, n_train + n_test)
    x = centers[y] + g.normal(0, 1, (len(y), dim))
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long)
    return Dataset("blobs", x[:n_train], y[:n_train], x[n_train:], y[n_train:], classes)


def manual_partition(sizes: list[int], n_test_each: int = 0) -> Partition:
    """Contiguous client partitions of the given sizes (no shuffling: easy to compute by hand)."""
    train, test, start = [], [], 0
    for s in sizes:
        train.append(np.arange(start, start + s))
        start += s
    for _ in sizes:
        test.append(np.arange(start, start + n_test_each))
        start += n_test_each
    return Partition("manual", train, test, "train")


def small_model() -> nn.Module:
    """The 5 -> 8 -> 3 tanh MLP most tests train."""
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))


def local_sgd(x, xs, ys, seed, epochs, bsz, lr, momentum=0.0, penalty=None, model_fn=None):
    """Local training by hand: torch.optim.SGD on the mean cross-entropy (+ penalty(params)) over the batches
    fedloop draws from the task seed. The local params and the number of steps taken."""
    m = (model_fn or small_model)()
    m.load_state_dict(x)
    opt = torch.optim.SGD(m.parameters(), lr=lr, momentum=momentum)
    gen = torch.Generator().manual_seed(seed)
    steps = 0
    for _ in range(epochs):
        order = torch.randperm(len(ys), generator=gen)
        for s in range(0, len(ys), bsz):
            b = order[s:s + bsz]
            opt.zero_grad()
            loss = F.cross_entropy(m(xs[b]), ys[b])
            if penalty is not None:
                loss = loss + penalty(dict(m.named_parameters()))
            loss.backward()
            opt.step()
            steps += 1
    return {k: v.detach().clone() for k, v in m.state_dict().items()}, steps


def options(rounds: int, seed: int = 0, federated: bool = False, **kw) -> RunOptions:
    """Run options for a short run on the CPU (no federated evaluation unless asked; tests marked gpu name their
    device)."""
    return RunOptions(rounds=rounds, seed=seed, eval=EvalOptions(federated=federated), **{"device": "cpu", **kw})


def run_sizes(strategy, sizes, executor="sequential", rounds=3, seed=5, model=small_model, loss=F.cross_entropy,
              engine="local", data=None, workers=None, **kw):
    """`strategy` over clients of the given sizes of blob data."""
    data = data if data is not None else blobs(n_train=sum(sizes))
    return simulate(model, data, manual_partition(sizes), strategy, options(rounds, seed, **kw), loss_fn=loss,
                    sim=SimOptions(executor=executor, engine=engine, workers=workers))


@contextmanager
def one_thread() -> Iterator[None]:
    """PyTorch on one intra-op thread, like client processes started with `--threads 1`: the float summation order,
    and so every bit, then match theirs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def first_to_create(path: str) -> bool:
    """True in exactly one process of those that race to create `path`."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL))
        return True
    except FileExistsError:
        return False


def assert_close(a, b, rtol=RTOL, atol=ATOL):
    assert list(a) == list(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol)


def assert_equal(a, b):
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture
def data() -> Dataset:
    return blobs()
