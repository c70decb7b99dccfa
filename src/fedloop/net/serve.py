"""`fedloop server CONFIG`: wait for clients, run the rounds over gRPC and write the same run directory as a
simulation, with a checkpoint of the full server state after every round (`--resume RUN_DIR` continues).
The server holds only the config's held-out data (for the model's shape and central evaluation); clients
bring their own."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

from ..config import Config, to_toml
from ..data.examples import Examples
from ..errors import TransportError
from ..experiment import RunResult, load_data, strategy_from_config, train
from ..models import model_factory
from ..store import atomic_write_text
from ..types import RoundRecord, ServerState
from .auth import Authenticator, read_tokens
from .fleet import GrpcFleet
from .server import start_server


def serve(cfg: Config, out: str | Path, *, cert_dir: str | Path | None, tokens: str | Path | None,
          insecure: bool = False, mutual_tls: bool = False, address: str | None = None, resume: bool = False,
          on_listen: Callable[[int], None] | None = None,
          on_round: Callable[[RoundRecord, ServerState], None] | None = None) -> RunResult:
    data = load_data(cfg)
    spec = data.spec()
    model_fn = model_factory(cfg.model.name, spec)
    if tokens is None and cert_dir is not None and not mutual_tls and (Path(cert_dir) / "tokens.txt").exists():
        tokens = Path(cert_dir) / "tokens.txt"
    auth = Authenticator(read_tokens(tokens) if tokens is not None else None, mutual_tls)
    settings = json.dumps({"config": cfg.model_dump(mode="json"), "spec": spec})
    run_id_file = Path(out) / "run_id"
    run_id = run_id_file.read_text().strip() if resume and run_id_file.exists() else uuid.uuid4().hex[:12]
    atomic_write_text(run_id_file, run_id + "\n")  # a resumed run keeps its id (clients' state is kept per run)
    fleet = GrpcFleet(auth, settings, run_id, cfg.server.round_deadline)
    server = start_server(fleet, address or cfg.server.address, cert_dir=cert_dir, insecure=insecure,
                          mutual_tls=mutual_tls)
    try:
        if on_listen is not None:
            on_listen(server.port)
        joined = fleet.wait_for_clients(cfg.server.min_clients, cfg.server.join_timeout)
        if joined < cfg.server.min_clients:
            raise TransportError(f"only {joined} of server.min_clients = {cfg.server.min_clients} clients joined "
                                 f"within {cfg.server.join_timeout:.0f} s")
        return train(fleet, model_fn, strategy_from_config(cfg), test=Examples.all(data.x_test, data.y_test),
                     partition_json=None, rounds=cfg.rounds, seed=cfg.seed, eval_every=cfg.eval.every,
                     federated_eval=cfg.eval.federated, target_accuracy=cfg.stop.target_accuracy,
                     patience=cfg.stop.patience, out=out, checkpoint_every=1, on_round=on_round,
                     model_meta={"model": cfg.model.name, "spec": spec, "dataset": data.name},
                     config_toml=to_toml(cfg), resume=resume, min_updates=cfg.server.min_updates,
                     retries=cfg.server.retries)
    finally:
        fleet.finish(drain=min(cfg.server.round_deadline, 30.0))
        server.stop(grace=5)
