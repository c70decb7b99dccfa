"""`fedloop run` on a real two-node Ray cluster on loopback (ray.cluster_utils.Cluster: a head and a worker node,
one CPU each): work on both nodes and the bits of two local processes; SIGTERM ends a Ray run as it ends a local
one and --resume continues it to the same bits; a node killed mid-round changes no bit; bad and unreachable
addresses are one-line errors within seconds."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

APP = '''
import os
import time
from pathlib import Path

from torch import nn

import fedloop

MARKS = {marks!r}


class Recorder(nn.Module):
    """A small MLP that, inside a Ray actor, notes the node it trains on, and is slow on the node named in
    MARKS/slow-node, so that a test can act while that node is mid-round."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x):
        import ray

        if ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None:
            node = ray.get_runtime_context().get_node_id()
            with open(os.path.join(MARKS, node), "a") as f:
                f.write(".")
            slow = os.path.join(MARKS, "slow-node")
            if os.path.exists(slow) and open(slow).read() == node:
                time.sleep(0.05)
        return self.body(x)


app = fedloop.App(model_fn=Recorder)
'''

ARGS = ["--quiet", "--set", "rounds=4", "--set", "partition.num_clients=4",
        "--set", "strategy.clients_per_round=4", "--set", "client.epochs=1",
        "--set", "checkpoint.every=1"]

RECORD = Path("/tmp/ray/ray_current_cluster")


def fedloop_cli(*args, timeout=300, env=None):
    return subprocess.run([sys.executable, "-m", "fedloop.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head and a worker node (one CPU each) on 127.0.0.1, the test app, and the run both executors agree on."""
    from ray.cluster_utils import Cluster

    root = tmp_path_factory.mktemp("cluster")
    marks = root / "marks"
    marks.mkdir()
    app = root / "app.py"
    app.write_text(APP.format(marks=str(marks)))
    saved = {k: os.environ.get(k) for k in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_AUTH_MODE")}
    record = RECORD.read_text() if RECORD.exists() else None  # the cluster Ray notes as this machine's
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["RAY_AUTH_MODE"] = "disabled"  # the cluster and every run here alike, whatever ~/.ray holds
    c = Cluster(initialize_head=True, connect=False,
                head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False})
    try:
        worker = c.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        c.wait_for_nodes()
        (marks / "slow-node").write_text(worker.node_id)
        local = root / "local"
        proc = fedloop_cli("run", "--out", str(local), "--app", f"{app}:app", *ARGS, "--set",
                           "sim.executor=processes", "--set", "sim.workers=2")
        assert proc.returncode == 0, proc.stderr
        yield {"cluster": c, "worker": worker, "head": c.head_node, "marks": marks, "root": root,
               "app": f"{app}:app", "local": local}
    finally:
        c.shutdown()
        if record is None:
            RECORD.unlink(missing_ok=True)
        else:
            RECORD.write_text(record)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def on_ray(env, out):
    return [sys.executable, "-m", "fedloop.cli", "run", "--out", str(out), "--app", env["app"], *ARGS,
            "--set", "sim.engine=ray", "--set", f"sim.ray_address={env['cluster'].address}",
            "--set", "sim.executor=sequential"]


def rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def same_model(a, b):
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return list(x) == list(y) and all(torch.equal(x[k], y[k]) for k in x)


def wait_for(condition, timeout=120):
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def marks_of(env, node) -> int:
    path = env["marks"] / node.node_id
    return len(path.read_text()) if path.exists() else 0


def test_sigterm_ends_a_ray_run_like_a_local_one_and_resume_gives_the_same_bits(cluster):
    out = cluster["root"] / "stopped"
    proc = subprocess.Popen(on_ray(cluster, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (out / "metrics.jsonl").exists() and len(rows(out)) >= 1)
    assert marks_of(cluster, cluster["head"]) > 0 and marks_of(cluster, cluster["worker"]) > 0  # both nodes work
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stop_reason"] == "interrupted" and summary["rounds"] == len(rows(out)) >= 1
    assert summary["executor"] == "ray (2 actors, executor sequential)"
    resumed = fedloop_cli("run", "--resume", str(out), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert same_model(out, cluster["local"])


def test_unset_means_a_private_local_ray_and_auto_the_cluster_recorded_here(cluster):
    assert cluster["cluster"].address in RECORD.read_text()  # on record here
    nodes = (cluster["head"], cluster["worker"])

    def run(*more):
        before = {p.name: len(p.read_text()) for p in cluster["marks"].iterdir()}
        proc = fedloop_cli("run", "--out", str(cluster["root"] / "private"), "--overwrite", "--app", cluster["app"],
                           *ARGS, "--set", "rounds=1", "--set", "sim.engine=ray", "--set", "sim.executor=sequential",
                           *more)
        assert proc.returncode == 0, proc.stderr
        return {p.name for p in cluster["marks"].iterdir() if len(p.read_text()) > before.get(p.name, 0)}

    private = run()
    assert private and not private & {n.node_id for n in nodes}  # trained on nodes of its own
    assert run("--set", "sim.ray_address=auto") == {n.node_id for n in nodes}


def test_actors_dropped_for_a_token_the_cluster_does_not_use_are_a_clear_error(cluster):
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0123456789abcdef" * 4}
    proc = fedloop_cli("run", "--out", str(cluster["root"] / "token"), "--app", cluster["app"], *ARGS,
                       "--set", "sim.engine=ray", "--set", f"sim.ray_address={cluster['cluster'].address}", env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "set RAY_AUTH_MODE=disabled here, or start the cluster with the same token" in proc.stderr, proc.stderr


def test_a_node_killed_mid_round_changes_no_bit(cluster):
    out = cluster["root"] / "killed"
    proc = subprocess.Popen(on_ray(cluster, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (out / "metrics.jsonl").exists() and len(rows(out)) >= 1)
    before = marks_of(cluster, cluster["worker"])
    wait_for(lambda: marks_of(cluster, cluster["worker"]) > before)  # round 2 has begun on the worker node
    start = time.monotonic()
    cluster["cluster"].remove_node(cluster["worker"], allow_graceful=False)
    stdout, stderr = proc.communicate(timeout=240)
    took = time.monotonic() - start
    assert proc.returncode == 0, stderr
    history = rows(out)
    incidents = [(r["round"], i) for r in history for i in r.get("incidents", [])]
    assert incidents and all("a Ray actor was lost" in i and "was run again" in i for _, i in incidents), history
    assert all(r["failures"] == 0 for r in history)
    assert same_model(out, cluster["local"])
    print(f"node lost in round {incidents[0][0]}: the run ended {took:.1f} s later; rounds took "
          f"{[r['seconds'] for r in history]} s")


@pytest.mark.parametrize("address, needle", [
    ("not-an-address", "'not-an-address': not a Ray address; use host:port"),
    ("127.0.0.1:9", "no Ray cluster answers there"),
    ("ray://127.0.0.1:9", "no Ray cluster answers there"),
])
def test_a_bad_or_unreachable_address_is_a_one_line_error_within_seconds(tmp_path, address, needle):
    start = time.monotonic()
    proc = fedloop_cli("run", "--out", str(tmp_path / "r"), "--quiet", "--set", "sim.engine=ray",
                       "--set", f"sim.ray_address={address}", timeout=60)
    assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    said = [line for line in proc.stderr.splitlines() if line and not line.startswith("fedloop fedavg on digits")]
    assert len(said) == 1, proc.stderr  # the run's banner, then one line
    assert time.monotonic() - start < 30
