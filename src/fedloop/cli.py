"""The command line: `fedloop run`, `fedloop partition`, `fedloop report`, `fedloop status`, `fedloop server`, ..."""

from __future__ import annotations

import argparse
import faulthandler
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import get_args

from rich.console import Console

from . import __version__
from .attacks.options import Kind as AttackKind
from .build import load_config
from .config import Config
from .errors import ConfigError, FedloopError
from .progress import ProgressBar, RoundLines, log_to, new_progress, setup_logging

console = Console(stderr=True)


def _stdout() -> Console:
    """Tables go to stdout; when it is not a terminal they are not squeezed to 80 columns."""
    out = Console()
    return out if out.is_terminal else Console(width=200)


def _default_out(cfg: Config) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.data.name}-{cfg.strategy.name}-{stamp}"


def _sets(args: argparse.Namespace) -> list[str]:
    """--set overrides, with --app REF as app.ref=REF."""
    return [*args.set, f"app.ref={args.app}"] if args.app else list(args.set)


DASHBOARD_PORT = 8050
"""The dashboard's port when --dashboard names none."""


@contextmanager
def _dashboard(args: argparse.Namespace, out: Path) -> Iterator[None]:
    """A dashboard of `out` beside the run while the body runs, when --dashboard asks for one."""
    if args.dashboard is None:
        yield
        return
    from .dashboard import Dashboard

    board = Dashboard(out, port=args.dashboard, wait=True).start()
    print(f"dashboard: {board.url}", file=sys.stderr, flush=True)
    try:
        yield
    finally:
        board.stop()


EXIT = {"interrupted": 130, "diverged": 1}
"""Exit codes of runs that ended with their files written but did not finish: stop reason -> code."""


def _finished(summary: dict, out: Path) -> int:
    """Print a run's last line; its exit code."""
    acc = f"{summary['accuracy']:.4f}" if summary.get("accuracy") is not None else "n/a"
    loss = f"{summary['loss']:.4f}" if summary.get("loss") is not None else "n/a"
    eps = f"  epsilon {summary['epsilon']:.3f} (delta {summary['delta']:g})" \
        if summary.get("epsilon") is not None else ""
    print(f"rounds {summary['rounds']}  stop {summary['stop_reason']}  accuracy {acc}  loss {loss}{eps}  "
          f"seconds {summary['seconds']:.1f}  -> {out}", flush=True)
    if summary["stop_reason"] == "diverged":
        print(f"error: the run diverged: its model or loss became NaN or infinite (its files hold the last finite "
              f"round, {summary['rounds']}); try a smaller learning rate", file=sys.stderr)
    if summary["stop_reason"] == "interrupted":
        print(f"interrupted after round {summary['rounds']}; its files are complete: continue it with "
              f"--resume {out}", file=sys.stderr)
    return EXIT.get(summary["stop_reason"], 0)


def cmd_run(args: argparse.Namespace) -> int:
    from .build import check_runnable, log_options
    from .experiment import run_config
    from .report import round_table
    from .store import run_directory

    if args.resume and (args.out or args.overwrite):
        raise ConfigError("--resume RUN_DIR continues that run: it takes no --out or --overwrite")
    config = args.config or (Path(args.resume) / "config.toml" if args.resume else None)
    cfg = load_config(config, _sets(args))
    out = Path(args.resume or args.out or _default_out(cfg))
    live = console.is_terminal and not args.quiet
    setup_logging(args.log_level, console, live, rounds=not args.quiet)
    # an --out that cannot be this run's is refused first; then what else can be known before any data is read (a
    # failure there leaves the directory as it was found)
    with run_directory(out, resume=bool(args.resume), overwrite=args.overwrite), log_to(out, log_options(cfg)), \
            _dashboard(args, out):
        check_runnable(cfg, resuming=bool(args.resume))
        source = cfg.data.path or cfg.data.name if cfg.app.ref else cfg.data.name
        print(f"fedloop {cfg.strategy.name} on {source}, model {cfg.app.ref or cfg.model.name}, "
              f"{cfg.partition.num_clients} clients ({cfg.partition.scheme}), {cfg.rounds} rounds -> {out}",
              file=sys.stderr)
        with new_progress(console, live) as progress:
            shown = (ProgressBar(progress, cfg.rounds), RoundLines()) if live else (RoundLines(),)
            result = run_config(cfg, out, shown, resume=bool(args.resume), overwrite=args.overwrite)
    if args.table:
        _stdout().print(round_table(result.history))
    return _finished(result.summary, out)


def cmd_privacy(args: argparse.Namespace) -> int:
    from .build import (
        load_data,
        model_fn_from_config,
        partition_from_config,
        privacy_options,
        strategy_from_config,
    )
    from .privacy.planner import plan

    if args.epsilon is not None and args.noise is not None:
        raise ConfigError("give --epsilon or --noise, not both")
    for name in ("epsilon", "noise"):
        if getattr(args, name) is not None and not getattr(args, name) > 0:
            raise ConfigError(f"--{name} {getattr(args, name)}: must be greater than 0")
    extra = [f"privacy.target_epsilon={args.epsilon}"] if args.epsilon is not None else \
        [f"privacy.noise_multiplier={args.noise}"] if args.noise is not None else []
    cfg = load_config(args.config, _sets(args) + extra)
    data = load_data(cfg)
    part = partition_from_config(cfg, data)
    num_params = sum(p.numel() for p in model_fn_from_config(cfg, data.spec())().parameters())
    lines = plan(strategy_from_config(cfg, calibrating=True), privacy_options(cfg), cfg.rounds, part.num_clients,
                 [len(t) for t in part.train], data.name, args.epsilon, args.noise, num_params)
    print("\n".join(lines))
    return 0


def cmd_partition(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from .build import load_data, partition_from_config
    from .data.partition import label_counts
    from .report import partition_table, plot_partition

    cfg = load_config(args.config, _sets(args))
    data = load_data(cfg)
    part = partition_from_config(cfg, data)
    counts = label_counts(data.y_train.numpy(), part.train, data.num_classes)
    _stdout().print(partition_table(counts, max_rows=args.max_rows))
    sizes = counts.sum(axis=1)
    print(f"scheme {part.scheme}: {part.num_clients} clients, rows per client min {sizes.min()} "
          f"median {int(np.median(sizes))} max {sizes.max()}; local test rows {sum(len(t) for t in part.test)}")
    if args.plot:
        plot_partition(counts, Path(args.plot), f"{data.name}: {part.scheme}, {part.num_clients} clients")
        print(f"heatmap -> {args.plot}")
    if args.json:
        Path(args.json).write_text(json.dumps(part.to_json()))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    import json

    from .report import plot_curves, round_table, run_title, summary_line
    from .store import read_metrics

    run_dir = Path(args.run_dir)
    rows = read_metrics(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else None
    title = ""
    if (run_dir / "config.toml").is_file():
        cfg = load_config(run_dir / "config.toml")
        title = run_title({"dataset": cfg.data.name, "strategy": cfg.strategy.name,
                           "model": cfg.app.ref or cfg.model.name})
    _stdout().print(round_table(rows))
    plot_curves(rows, run_dir / "curves.png", title)
    print(f"curves -> {run_dir / 'curves.png'}")
    print(summary_line(rows, summary))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from rich.table import Table

    from .status import describe, read_status

    status = read_status(args.run_dir)
    if args.json:
        print(json.dumps(status.to_json(), indent=1))
        return 0
    table = Table(show_header=False, box=None)
    for label, value in describe(status):
        table.add_row(f"[bold]{label}[/bold]", value)
    _stdout().print(table)
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from .dashboard import Dashboard

    board = Dashboard(args.run_dir, host=args.host, port=args.port)
    print(f"dashboard of {args.run_dir}: {board.url} (Ctrl-C stops it)", flush=True)
    board.serve_forever()
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    from .build import check_runnable, log_options
    from .net.serve import serve
    from .server_options import host_port
    from .store import run_directory

    if args.resume and (args.out or args.overwrite):
        raise ConfigError("--resume RUN_DIR continues that run: it takes no --out or --overwrite")
    cfg = load_config(args.config, _sets(args))
    if args.address is not None:
        host_port(args.address, "--address")
    if args.certs is not None and not Path(args.certs).is_dir():
        raise ConfigError(f"--certs {args.certs}: no such directory (`fedloop certs DIR` creates one)")
    out = Path(args.resume or args.out or _default_out(cfg))
    setup_logging(args.log_level, console, live=False)
    with run_directory(out, resume=args.resume is not None, overwrite=args.overwrite), log_to(out, log_options(cfg)), \
            _dashboard(args, out):
        check_runnable(cfg, deployed=True)
        result = serve(cfg, out, cert_dir=args.certs, tokens=args.tokens, allowlist=args.allowlist,
                       insecure=args.insecure, mutual_tls=args.mtls, address=args.address,
                       resume=args.resume is not None, overwrite=args.overwrite,
                       on_listen=lambda port: print(f"listening on port {port}; waiting for "
                                                    f"{cfg.server.min_clients} clients", flush=True),
                       observers=(RoundLines(),))
    return _finished(result.summary, out)


def cmd_client(args: argparse.Namespace) -> int:
    from .net.client_process import client_attack, run_client

    setup_logging(args.log_level, console, live=False)
    attack = client_attack(args.attack, args.attack_scale, args.attack_target)
    answered = run_client(args.server, args.data, token_file=args.token_file, ca_cert=args.ca_cert, cert=args.cert,
                          key=args.key, insecure=args.insecure, state_dir=args.state_dir, expect_id=args.id,
                          give_up_after=args.give_up_after, threads=args.threads, app_ref=args.app,
                          attack=attack, accept_seeded_noise=args.accept_seeded_noise, exit_at=args.exit_at,
                          device=args.device)
    print(f"the run is over; answered {answered} tasks", flush=True)
    return 0


def cmd_certs(args: argparse.Namespace) -> int:
    from .net.certs import add_clients, ca_dir, make_certs

    if args.add:
        add_clients(args.dir, args.add)
        print(f"issued credentials for clients {', '.join(args.add)}; appended to tokens.txt and clients.txt in "
              f"{args.dir}")
        return 0
    out = make_certs(args.dir, [str(i) for i in range(args.clients)], args.host, force=args.force)
    print(f"wrote ca.pem, server.pem/.key, client-<id>.pem/.key/.token for clients 0..{args.clients - 1}, "
          f"tokens.txt and clients.txt -> {out}; the CA's private key -> {ca_dir(out)} (keep it off the server)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedloop", description="Federated learning: simulate, inspect, report, deploy.")
    p.add_argument("--version", action="version", version=f"fedloop {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def log_level(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="how much fedloop logs (default: info)")

    def dashboard_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--dashboard", type=int, nargs="?", const=DASHBOARD_PORT, metavar="PORT",
                        help=f"serve the run's dashboard on 127.0.0.1:PORT while it runs (default {DASHBOARD_PORT})")

    def config_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("config", nargs="?", help="TOML config (default: the embedded digits job)")
        sp.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value (repeatable)")
        sp.add_argument("--app", metavar="REF", help="your own model, loss and data reader: 'file.py:name' or "
                                                     "'package.module:name' naming a fedloop.App (= --set app.ref=REF)")

    run = sub.add_parser("run", help="run a federated simulation")
    config_args(run)
    run.add_argument("--out", help="run directory (default: runs/<data>-<strategy>-<time>); refused if it holds a run")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run from its last checkpoint (its config "
                                                         "is RUN_DIR/config.toml unless CONFIG is given; rounds may "
                                                         "grow)")
    run.add_argument("--overwrite", action="store_true", help="clear the run in --out first")
    run.add_argument("--quiet", action="store_true", help="no progress bar and no per-round lines (log.txt has them)")
    log_level(run)
    run.add_argument("--table", action="store_true", help="print the round table at the end")
    dashboard_arg(run)
    run.set_defaults(func=cmd_run)

    part = sub.add_parser("partition", help="show how a config partitions its data over clients")
    config_args(part)
    part.add_argument("--plot", metavar="PNG", help="save a heatmap of label counts per client")
    part.add_argument("--json", metavar="FILE", help="save client id -> row indices")
    part.add_argument("--max-rows", type=int, default=50, help="clients shown in the table")
    part.set_defaults(func=cmd_partition)

    rep = sub.add_parser("report", help="print a run's round table and redraw its plots")
    rep.add_argument("run_dir", help="a run directory (fedloop run --out, fedloop server --out)")
    rep.set_defaults(func=cmd_report)

    dash = sub.add_parser("dashboard", help="serve a live web page of a run directory (read-only)")
    dash.add_argument("run_dir", help="a run directory, running or finished")
    dash.add_argument("--port", type=int, default=DASHBOARD_PORT, help=f"default {DASHBOARD_PORT}; 0: any free port")
    dash.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    dash.set_defaults(func=cmd_dashboard)

    stat = sub.add_parser("status", help="one screen on a run, running or finished: round, ETA, last metrics, "
                                         "epsilon, failures")
    stat.add_argument("run_dir", help="a run directory (fedloop run --out, fedloop server --out)")
    stat.add_argument("--json", action="store_true", help="the same as JSON, for scripts")
    stat.set_defaults(func=cmd_status)

    srv = sub.add_parser("server", help="run the rounds for clients that connect over gRPC")
    config_args(srv)
    srv.add_argument("--out", help="run directory (default: runs/<data>-<strategy>-<time>)")
    srv.add_argument("--address", help="HOST:PORT to listen on (default: server.address of the config)")
    dashboard_arg(srv)
    srv.add_argument("--certs", metavar="DIR", help="TLS files from `fedloop certs DIR` (server.pem/.key, ca.pem)")
    srv.add_argument("--tokens", metavar="FILE", help="client tokens, '<id> <token>' per line (default: "
                                                      "DIR/tokens.txt of --certs)")
    srv.add_argument("--mtls", action="store_true", help="authenticate clients by certificate instead of token")
    srv.add_argument("--allowlist", metavar="FILE", help="issued client certificates, '<id> <sha256 fingerprint>' per "
                                                         "line (default: DIR/clients.txt of --certs); mTLS only")
    srv.add_argument("--insecure", action="store_true", help="plaintext, loopback only")
    srv.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run from its last checkpoint")
    srv.add_argument("--overwrite", action="store_true", help="clear the run in --out first")
    log_level(srv)
    srv.set_defaults(func=cmd_server)

    cli = sub.add_parser("client", help="serve one client's local data to a fedloop server")
    cli.add_argument("--server", required=True, metavar="HOST:PORT", help="the server's address")
    cli.add_argument("--data", required=True, metavar="PATH", help="this client's data, in the reader the "
                                                                     "server's config names (data.name)")
    cli.add_argument("--app", metavar="REF", help="this client's copy of the server's App ('file.py:name' or "
                                                  "'package.module:name'; default: the server's [app] ref)")
    cli.add_argument("--id", type=int, help="the client id this client expects its credential to carry")
    cli.add_argument("--token-file", metavar="F", help="this client's token (client-N.token of `fedloop certs`)")
    cli.add_argument("--ca-cert", metavar="F", help="the CA that signed the server certificate (ca.pem)")
    cli.add_argument("--cert", metavar="F", help="client certificate (mutual TLS)")
    cli.add_argument("--key", metavar="F", help="client key (mutual TLS)")
    cli.add_argument("--insecure", action="store_true", help="plaintext, loopback only")
    cli.add_argument("--state-dir", metavar="DIR", help="where this client keeps its state across restarts")
    cli.add_argument("--give-up-after", type=float, default=600.0, metavar="S",
                     help="stop after this many seconds without reaching the server (default 600)")
    cli.add_argument("--device", default="auto", metavar="D",
                     help="where this client trains: auto (CUDA when there is one, else the CPU), cpu, cuda, cuda:N "
                          "or mps (default auto; the server's device does not matter)")
    cli.add_argument("--threads", type=int, metavar="N",
                     help="PyTorch threads for local training (default: one per core). With several clients "
                          "on one machine use --threads 1: oversubscribed cores slow training by 10-100x")
    kinds = [k for k in get_args(AttackKind) if k != "none"]
    cli.add_argument("--attack", metavar="KIND", choices=kinds,
                     help="TEST ONLY: make this client malicious, to test a server's defences over the wire "
                          f"({', '.join(kinds)}; alie and ipm need the round's honest updates: simulation only)")
    cli.add_argument("--attack-scale", type=float, metavar="S", help="TEST ONLY: the boost of --attack scaled, "
                                                                     "sign_flip or backdoor")
    cli.add_argument("--attack-target", type=int, default=0, metavar="LABEL",
                     help="TEST ONLY: the label --attack backdoor's trigger should produce")
    cli.add_argument("--accept-seeded-noise", action="store_true",
                     help="TEST ONLY: when the server asks for seeded DP noise (privacy.secure_noise = false), draw "
                          "it from the seed the server sends, so a test can compare bits with the simulator; the "
                          "server can then remove the noise. Without it the client always uses its own secret noise")
    cli.add_argument("--exit-at", metavar="STAGE",
                     help="TEST ONLY: exit without answering when the first task of this stage arrives (a client "
                          "that drops out mid-round: secagg-advertise, secagg-share, fit, secagg-unmask, ...)")
    log_level(cli)
    cli.set_defaults(func=cmd_client)

    priv = sub.add_parser("privacy", help="plan a privacy budget: epsilon for a noise multiplier, or the noise "
                                          "multiplier for a target epsilon")
    config_args(priv)
    priv.add_argument("--epsilon", type=float, metavar="E", help="calibrate the noise multiplier for this epsilon")
    priv.add_argument("--noise", type=float, metavar="Z", help="the epsilon this noise multiplier spends")
    priv.set_defaults(func=cmd_privacy)

    cert = sub.add_parser("certs", help="create a development CA, server certificate and client credentials")
    cert.add_argument("dir", help="where to write the credentials (the CA's key goes to DIR-ca)")
    cert.add_argument("--clients", type=int, default=10, help="credentials for clients 0..N-1")
    cert.add_argument("--host", action="append", default=[], help="extra server host name or IP (repeatable)")
    cert.add_argument("--add", nargs="+", metavar="ID", help="issue credentials for more clients with DIR's CA")
    cert.add_argument("--force", action="store_true", help="replace an existing CA and tokens (revokes them all)")
    cert.set_defaults(func=cmd_certs)
    return p


STOP_SECONDS = 45.0
"""After SIGTERM, seconds the process may take to write its files and stop; past them it prints every thread's
stack to stderr and exits with status 1, so a stop request never hangs."""


def _interrupt(signum: int, frame: object) -> None:
    faulthandler.dump_traceback_later(STOP_SECONDS, exit=True)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # gRPC's C core prints its own lines (handshake failures, bind errors) to stderr; fedloop says what went wrong
    # in its own words, so they show only with --log-level debug (read once, when grpc is first imported)
    os.environ.setdefault("GRPC_VERBOSITY", "DEBUG" if getattr(args, "log_level", "") == "debug" else "NONE")
    signal.signal(signal.SIGTERM, _interrupt)  # a stop request ends a run like Ctrl-C: its files written
    setup_logging(getattr(args, "log_level", "info"), console, live=False)
    try:
        return args.func(args)
    except FedloopError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; files written so far are complete", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
