"""The dashboard: its HTTP answers (read-only, whitelisted paths, clear errors) and, in headless Chromium, a run in
progress drawn live: a chart gains a point when the run appends a round, and an injected dropout shows as a failure
with its reason."""

import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from browser import chart_points, missing, open_page, screenshot, wait_for
from conftest import blobs, manual_partition, options
from conftest import small_model as model_fn

from fedloop import ConfigError, FedAvg, LocalSGD, Sampler
from fedloop.cli import main
from fedloop.dashboard import Dashboard
from fedloop.dashboard.server import new_rows
from fedloop.experiment import build_fleet, partition_json
from fedloop.observers import Observer
from fedloop.run import train
from fedloop.sim import ChaosFleet

SIZES = [12, 9, 15, 8, 11, 14]


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def finished_run(tmp_path: Path, rounds: int = 3) -> Path:
    data, part = blobs(n_train=sum(SIZES)), manual_partition(SIZES, n_test_each=0)
    strategy = FedAvg(sampler=Sampler(4), local=LocalSGD(epochs=1, batch_size=4))
    out = tmp_path / "run"
    train(build_fleet(data, part, strategy, model_fn), model_fn, strategy, options(rounds, out=out),
          partition_json=partition_json(data, part), config_toml='rounds = 3\n[strategy]\nname = "fedavg"\n')
    return out


@pytest.fixture
def board(tmp_path):
    run = finished_run(tmp_path)
    dash = Dashboard(run, port=0).start()
    yield dash, run
    dash.stop()


def test_the_dashboard_serves_the_run_and_nothing_else(board):
    dash, run = board
    status, body = get(dash.url)
    assert status == 200 and b"uPlot.iife.min.js" in body
    assert get(dash.url + "static/uPlot.iife.min.js")[0] == 200
    got = json.loads(get(dash.url + "api/status")[1])
    assert got["round"] == 3 and got["strategy"] == "fedavg"
    rows = json.loads(get(dash.url + "api/metrics?offset=0")[1])
    assert [r["round"] for r in rows["rows"]] == [1, 2, 3] and rows["offset"] == (run / "metrics.jsonl").stat().st_size
    assert json.loads(get(dash.url + f"api/metrics?offset={rows['offset']}")[1])["rows"] == []  # only new lines
    counts = json.loads(get(dash.url + "api/partition")[1])["label_counts"]
    assert [sum(c) for c in counts] == SIZES
    assert get(dash.url + "api/config")[1].startswith(b"rounds = 3")
    assert json.loads(get(dash.url + "api/presence")[1])["clients"] == []  # a simulation has no connections
    seen = {"time": 100.0, "clients": [{"client": 2, "examples": 9, "live": False, "last_seen": 90.0, "missed": 1}]}
    (run / "presence.json").write_text(json.dumps(seen))  # as a deployed server writes it
    assert json.loads(get(dash.url + "api/presence")[1]) == seen
    for bad in ("../config.toml", "static/../../config.toml", "static/", "static/app.js/..%2f..%2fconfig.toml",
                "metrics.jsonl", "%2e%2e/summary.json", "checkpoints/"):
        status, body = get(dash.url + bad)
        assert status == 404 and b"no such page" in body, bad
    assert get(dash.url + "api/metrics?offset=-1")[0] == 400
    req = urllib.request.Request(dash.url + "api/status", method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 405


def test_the_event_stream_sends_each_round_once_and_then_the_new_ones(tmp_path):
    run = finished_run(tmp_path)
    rows, offset, reset = new_rows(run, 0)
    assert len(rows) == 3 and not reset
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"round": 4, "clients": 2')  # a line being written: not sent until it ends
    assert new_rows(run, offset)[0] == []
    with (run / "metrics.jsonl").open("a") as f:
        f.write(', "failures": 0}\n')
    assert [r["round"] for r in new_rows(run, offset)[0]] == [4]
    (run / "metrics.jsonl").write_text('{"round": 1}\n')  # replaced by a new run: read again from the start
    rows, _, reset = new_rows(run, offset)
    assert reset and rows == [{"round": 1}]


def test_clear_errors_for_a_missing_run_and_a_port_in_use(tmp_path, capsys):
    with pytest.raises(ConfigError, match="no such run directory"):
        Dashboard(tmp_path / "nope", port=0)
    assert main(["dashboard", str(tmp_path / "nope")]) == 2
    assert "no such run directory" in capsys.readouterr().err
    run = finished_run(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port} is in use: pick another port"):
            Dashboard(run, port=port)
        assert main(["dashboard", str(run), "--port", str(port)]) == 2
        assert "is in use" in capsys.readouterr().err


class Gate(Observer):
    """Holds the run after each round until the test lets it go on: a run in progress, one round at a time."""

    def __init__(self) -> None:
        self.go = threading.Semaphore(0)

    def round(self, record, state) -> None:
        self.go.acquire(timeout=120)


BROWSER = missing()


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(BROWSER is not None and not os.environ.get("FEDLOOP_REQUIRE_BROWSER"),
                    reason=f"browser test: {BROWSER}")
def test_in_a_browser_a_live_run_gains_a_point_per_round_and_shows_an_injected_dropout(tmp_path):
    data, part = blobs(n_train=sum(SIZES) + 3 * len(SIZES)), manual_partition(SIZES, n_test_each=3)
    strategy = FedAvg(sampler=Sampler(6), local=LocalSGD(epochs=1, batch_size=4))
    fleet = ChaosFleet(build_fleet(data, part, strategy, model_fn), drop=0.25, seed=5)
    out, gate = tmp_path / "run", Gate()
    run = threading.Thread(target=train, args=(fleet, model_fn, strategy, options(6, out=out, federated=True,
                                                                                   observers=(gate,))),
                           kwargs={"partition_json": partition_json(data, part)}, daemon=True)
    run.start()
    dash = Dashboard(out, port=0, wait=True).start()
    driver = open_page(dash.url)
    try:
        for _ in range(2):
            gate.go.release()
        wait_for(driver, lambda d: chart_points(d, "accuracy") == 3, what="3 rounds on the accuracy chart")
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert len(rows) == 3
        gate.go.release()  # one more round
        wait_for(driver, lambda d: chart_points(d, "accuracy") == 4, what="the 4th round on the accuracy chart")
        fourth = json.loads((out / "metrics.jsonl").read_text().splitlines()[3])
        dropped = [f for f in fourth.get("failed_clients", []) if "chaos: drop" in f["reason"]]
        while not dropped:  # rounds until the chaos drops a client (seeded: it happens within a few)
            gate.go.release()
            n = len((out / "metrics.jsonl").read_text().splitlines()) + 1
            wait_for(driver, lambda d, n=n: chart_points(d, "accuracy") == n, what=f"round {n}")
            last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
            dropped = [f for f in last.get("failed_clients", []) if "chaos: drop" in f["reason"]]
        want = f"client {dropped[0]['client']}: reply lost (chaos: drop)"
        wait_for(driver, lambda d: want in d.find_element("id", "clients").text, what=want)
        assert "running" in driver.find_element("id", "status").text
        now = time.time()
        (out / "presence.json").write_text(json.dumps({"time": now, "clients": [  # as a deployed server writes it
            {"client": 0, "examples": 12, "live": True, "last_seen": now - 1, "missed": 0},
            {"client": 1, "examples": 9, "live": False, "last_seen": now - 40, "missed": 2}]}))
        wait_for(driver, lambda d: "1 of 2 joined clients connected" in d.find_element("id", "presence").text,
                 what="the connected clients")
        assert "client 1: gone, last seen 40 s ago, 9 examples, 2 tasks missed" in \
            driver.find_element("id", "presence").text
        assert chart_points(driver, "clients") == chart_points(driver, "accuracy")
        shot = screenshot(driver, Path(os.environ.get("FEDLOOP_ARTIFACTS", tmp_path)) / "dashboard.png")
        assert shot.stat().st_size > 10_000
    finally:
        driver.quit()
        for _ in range(10):
            gate.go.release()
        run.join(timeout=60)
        dash.stop()


@pytest.mark.slow
def test_fedloop_run_with_dashboard_serves_the_run_while_it_runs(tmp_path):
    import re
    import signal
    import subprocess
    import sys

    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "fedloop.cli", "run", "--out", str(out), "--quiet", "--dashboard",
                             "0", "--set", "rounds=5000", "--set", "eval.federated=false",
                             "--set", "checkpoint.every=1000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        url = None
        while url is None:
            line = proc.stderr.readline()
            assert line, "the run ended before it printed its dashboard"
            if m := re.search(r"dashboard: (http://127\.0\.0\.1:\d+/)", line):
                url = m.group(1)
        got = {}
        for _ in range(300):
            got = json.loads(get(url + "api/status")[1])
            if got.get("round", 0) >= 1:
                break
            threading.Event().wait(0.2)
        assert got["status"] == "running" and got["pid"] == proc.pid and got["rounds"] == 5000
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "api/status", timeout=5)  # the dashboard ends with its run
