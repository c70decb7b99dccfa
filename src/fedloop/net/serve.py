"""`fedloop server CONFIG`: wait for clients, run the rounds over gRPC and write the same run directory as a
simulation, with a checkpoint of the full server state after every round (`--resume RUN_DIR` continues).
The server holds only the config's held-out data (for the model's shape and central evaluation); clients
bring their own."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from pathlib import Path

from ..build import load_data, model_fn_from_config, round_policy, run_options, server_options, strategy_from_config
from ..config import Config, to_toml
from ..data.examples import Examples
from ..errors import TransportError
from ..observers import Observer
from ..run import CheckpointOptions, RunResult, train
from ..store import atomic_write_text
from .auth import Authenticator, read_tokens
from .fleet import GrpcFleet
from .server import start_server


def serve(cfg: Config, out: str | Path, *, cert_dir: str | Path | None, tokens: str | Path | None,
          insecure: bool = False, mutual_tls: bool = False, address: str | None = None, resume: bool = False,
          on_listen=None, observers: tuple[Observer, ...] = ()) -> RunResult:  # noqa: ANN001 - a callable(port)
    data = load_data(cfg)
    spec = data.spec()
    model_fn = model_fn_from_config(cfg, spec)
    options = server_options(cfg)
    if tokens is None and cert_dir is not None and not mutual_tls and (Path(cert_dir) / "tokens.txt").exists():
        tokens = Path(cert_dir) / "tokens.txt"
    auth = Authenticator(read_tokens(tokens) if tokens is not None else None, mutual_tls)
    settings = json.dumps({"config": cfg.model_dump(mode="json"), "spec": spec})
    run_id_file = Path(out) / "run_id"
    run_id = run_id_file.read_text().strip() if resume and run_id_file.exists() else uuid.uuid4().hex[:12]
    atomic_write_text(run_id_file, run_id + "\n")  # a resumed run keeps its id (clients' state is kept per run)
    fleet = GrpcFleet(auth, settings, run_id, options.liveness_timeout)
    server = start_server(fleet, address or options.address, cert_dir=cert_dir, insecure=insecure,
                          mutual_tls=mutual_tls)
    try:
        if on_listen is not None:
            on_listen(server.port)
        joined = fleet.wait_for_clients(options.min_clients, options.join_timeout)
        if joined < options.min_clients:
            raise TransportError(f"only {joined} of server.min_clients = {options.min_clients} clients joined "
                                 f"within {options.join_timeout:.0f} s")
        run = replace(run_options(cfg, out=out, resume=resume, observers=observers),
                      checkpoint=CheckpointOptions(every=1), policy=round_policy(options))
        return train(fleet, model_fn, strategy_from_config(cfg), run, test=Examples.all(data.x_test, data.y_test),
                     model_meta={"model": cfg.model.name, "spec": spec, "dataset": data.name},
                     config_toml=to_toml(cfg))
    finally:
        fleet.finish(drain=min(options.round_deadline or 30.0, 30.0))
        server.stop(grace=5)
