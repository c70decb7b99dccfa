"""`fedloop server CONFIG`: wait for clients, run the rounds over gRPC and write the same run directory as a
simulation, with a checkpoint of the full server state after every round (`--resume RUN_DIR` continues).
The server holds only the config's held-out data (for the model's shape and central evaluation); clients
bring their own."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from ..app import model_digest
from ..build import (
    calibrated,
    load_config,
    load_data,
    loss_from_config,
    model_fn_from_config,
    model_meta,
    round_policy,
    run_options,
    server_options,
    strategy_from_config,
)
from ..config import COMPUTATION, Config, differences, to_toml
from ..data.examples import Examples
from ..device import chosen as chosen_device
from ..errors import ConfigError, TransportError
from ..observers import Observer
from ..run import CheckpointOptions, train
from ..store import RunDir, atomic_write_json, atomic_write_text, prepare_run_dir
from ..types import RunResult
from .auth import authenticator
from .fleet import GrpcFleet
from .server import StreamLimits, start_server
from .spool import Spool

log = logging.getLogger(__name__)

PRESENCE_EVERY = 2.0
"""Seconds between writes of RUN_DIR/presence.json."""
DEPLOYED = tuple(k for k in COMPUTATION if not k.startswith("sim.")) + ("server.max_update_norm",)
"""What a resumed server must keep: the computation (simulation settings aside) and its update bound."""


def client_settings(cfg: Config, spec: dict) -> str:
    """What a client needs to build its app, and nothing else (no paths, no server settings): the reader of its
    data, the model (or the user's App), the strategy's client half, the client-side transforms and whether updates go
    through secure aggregation."""
    config = cfg.model_dump(mode="json", include={"seed", "model", "app", "strategy", "client", "transforms",
                                                  "privacy", "secagg"})
    config["data"] = cfg.data.model_dump(mode="json", include={"name", "test_fraction", "split", "label_column"})
    return json.dumps({"config": config, "spec": spec})


WAIT_REPORT = 30.0
"""Seconds between the lines that say which clients the server still waits for."""


def _wait_for_clients(fleet: GrpcFleet, count: int, timeout: float) -> int:
    """Wait (at most `timeout`) for `count` live clients, naming the run's earlier clients that are not back yet
    (after a resume, the ones an operator has to restart)."""
    end = time.monotonic() + timeout
    while True:
        if missing := fleet.missing():
            log.info("waiting for %d clients; not back yet: %s", count, _ids(missing))
        joined = fleet.wait_for_clients(count, max(0.0, min(WAIT_REPORT, end - time.monotonic())))
        if joined >= count or time.monotonic() >= end:
            return joined


def _ids(ids: list[int], shown: int = 20) -> str:
    return "clients " + ", ".join(map(str, ids[:shown])) + (f" and {len(ids) - shown} more" if len(ids) > shown else "")


def serve(cfg: Config, out: str | Path, *, cert_dir: str | Path | None, tokens: str | Path | None,
          allowlist: str | Path | None = None, insecure: bool = False, mutual_tls: bool = False,
          address: str | None = None, resume: bool = False, overwrite: bool = False,
          on_listen: Callable[[int], None] | None = None, observers: tuple[Observer, ...] = ()) -> RunResult:
    """Serve the run `cfg` describes in `out` (see the module docstring); clients authenticate by token (`tokens`,
    default DIR/tokens.txt of `cert_dir`) or, with `mutual_tls`, by a certificate on `allowlist` (default
    DIR/clients.txt)."""
    options = server_options(cfg)
    if cfg.privacy.mode == "dp-sgd" and cfg.privacy.noise_multiplier is None:
        raise ConfigError("privacy.target_epsilon: a server cannot calibrate DP-SGD without its clients' example "
                          "counts; set privacy.noise_multiplier (fedloop privacy CONFIG --epsilon E finds it)")
    cfg = calibrated(cfg, options.min_clients)  # fewer clients, less amplification: the conservative choice
    cfg = cfg.model_copy(update={"device": chosen_device(cfg.device)})  # where the server evaluates
    auth = authenticator(cert_dir, tokens, mutual_tls, allowlist)
    run_dir = RunDir(prepare_run_dir(out, resume=resume, overwrite=overwrite))
    if resume:
        run_dir.latest_checkpoint()  # no checkpoint: fail now, not after the clients joined
        if changed := differences(cfg, load_config(run_dir.path / "config.toml"), DEPLOYED):
            raise ConfigError(f"{out}: cannot resume with a config that changes the computation: "
                              f"{', '.join(changed)} differ from its config.toml")
    data = load_data(cfg)
    spec = data.spec()
    model_fn = model_fn_from_config(cfg, spec)
    run_id_file, registry = run_dir.path / "run_id", run_dir.path / "clients.json"
    run_id = run_id_file.read_text().strip() if resume and run_id_file.exists() else uuid.uuid4().hex[:12]
    atomic_write_text(run_id_file, run_id + "\n")  # a resumed run keeps its id (clients' state is kept per run)
    if not resume:
        registry.unlink(missing_ok=True)  # the sample counts clients joined with belong to one run
    spool = Spool(run_dir.path / "spool", options.spool_bytes)
    fleet = GrpcFleet(auth, client_settings(cfg, spec), run_id, spool, options, registry,
                      {**spec, "model_digest": model_digest(model_fn)})
    failure: str | None = "the server stopped"
    presence = Presence(fleet, run_dir.path / "presence.json").start()
    try:
        server = start_server(fleet, address or options.address, cert_dir=cert_dir, insecure=insecure,
                              mutual_tls=mutual_tls,
                              limits=StreamLimits(options.stream_idle_timeout, options.min_transfer_rate,
                                                  options.max_connections))
        try:
            if on_listen is not None:
                on_listen(server.port)
            joined = _wait_for_clients(fleet, options.min_clients, options.join_timeout)
            if joined < options.min_clients:
                missing = fleet.missing()
                raise TransportError(f"only {joined} of server.min_clients = {options.min_clients} clients joined "
                                     f"within {options.join_timeout:.0f} s" +
                                     (f" ({_ids(missing)} of this run did not come back)" if missing else ""))
            run = replace(run_options(cfg, out=out, resume=resume, observers=observers),
                          checkpoint=CheckpointOptions(every=1), policy=round_policy(options))
            result = train(fleet, model_fn, strategy_from_config(cfg), run,
                           test=Examples.all(data.x_test, data.y_test), loss_fn=loss_from_config(cfg),
                           model_meta=model_meta(cfg, spec, data.name),
                           config_toml=to_toml(cfg))
            # an interrupted server tells its clients nothing: they keep reconnecting until it resumes
            failure = {"diverged": "the run diverged", "interrupted": None}.get(result.stop_reason, "")
            return result
        except KeyboardInterrupt:
            failure = None
            raise
        except BaseException as exc:
            failure = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise
        finally:
            if failure is not None:
                fleet.finish(drain=min(options.round_deadline or 30.0, 30.0), failure=failure or None)
            server.stop(grace=5)
    finally:
        presence.stop()
        spool.remove()


class Presence:
    """Writes the clients' presence (GrpcFleet.presence) to RUN_DIR/presence.json every PRESENCE_EVERY seconds
    while the server runs, atomically: which clients are connected and when each was last seen, for the
    dashboard."""

    def __init__(self, fleet: GrpcFleet, path: Path):
        self.fleet, self.path = fleet, path
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fedloop-presence", daemon=True)

    def start(self) -> Presence:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(PRESENCE_EVERY):
            self._write()
        self._write()  # as the server stops: the file ends with the clients' last state

    def _write(self) -> None:
        try:
            atomic_write_json(self.path, {"time": round(time.time(), 3), "clients": self.fleet.presence()})
        except OSError as exc:
            log.warning("cannot write %s: %s", self.path, exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
