"""The dashboard's HTTP side: a read-only server for one run directory, from the standard library
(http.server, one thread per connection). It serves its own page and assets (uPlot, vendored), and the run's state
as JSON: the status, the rounds of metrics.jsonl from a byte offset on (so a poll or the event stream reads only
the new lines), the resolved config, the partition's label counts, and for a deployed server its clients'
presence and its refusals. Nothing else is
served: no file path from a request reaches the file system, so there is no traversal and no listing.
"""

from __future__ import annotations

import errno
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..errors import ConfigError, FedloopError
from ..status import read_status

log = logging.getLogger(__name__)

STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/static/style.css": ("style.css", "text/css; charset=utf-8"),
          "/static/uPlot.iife.min.js": ("uPlot.iife.min.js", "text/javascript; charset=utf-8"),
          "/static/uPlot.min.css": ("uPlot.min.css", "text/css; charset=utf-8")}
POLL = 0.5
"""Seconds between the event stream's looks at metrics.jsonl."""
STATUS_EVERY = 2.0
"""Seconds between status events."""
MAX_CHUNK = 8 << 20
"""The most bytes of metrics.jsonl one answer reads (a long run's history arrives over several)."""
REFUSALS = 50
"""The newest refusal lines of a deployed run's log that the dashboard shows."""


def new_rows(run_dir: Path, offset: int) -> tuple[list[dict[str, Any]], int, bool]:
    """The complete lines of metrics.jsonl after byte `offset` (a line still being written waits for the next
    look), the offset after them, and whether the file was replaced (shorter than the offset: read from 0)."""
    path = run_dir / "metrics.jsonl"
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return [], 0, offset > 0
    reset = size < offset
    start = 0 if reset else offset
    with path.open("rb") as f:
        f.seek(start)
        chunk = f.read(MAX_CHUNK)
    end = chunk.rfind(b"\n") + 1
    rows = []
    for line in chunk[:end].splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # not a round's line (a file being replaced): skipped, as fedloop report does
    return rows, start + end, reset


def label_counts(run_dir: Path) -> list[list[int]] | None:
    """The partition's clients x classes row counts, where partition.json has them (simulations)."""
    try:
        data = json.loads((run_dir / "partition.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    counts = data.get("label_counts") if isinstance(data, dict) else None
    return counts if isinstance(counts, list) else None


def refusals(run_dir: Path, newest: int = REFUSALS) -> list[str]:
    """The server's refusal lines in log.txt (a deployed run's audit log), newest last."""
    try:
        lines = (run_dir / "log.txt").read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [line for line in lines if " refused " in line or "rejected the reply" in line][-newest:]


def presence(run_dir: Path) -> dict[str, Any]:
    """A deployed server's clients (presence.json: connected or not, when each was last seen); empty otherwise."""
    try:
        data = json.loads((run_dir / "presence.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {"time": None, "clients": []}
    return data if isinstance(data, dict) else {"time": None, "clients": []}


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("dashboard %s: " + format, self.address_string(), *args)

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        url = urlsplit(self.path)
        run_dir = self.server.run_dir
        try:
            if url.path in STATIC:
                name, kind = STATIC[url.path]
                self._send(200, (resources.files(__package__) / "static" / name).read_bytes(), kind)
            elif url.path == "/api/status":
                self._json(self._status())
            elif url.path == "/api/metrics":
                offset = _offset(parse_qs(url.query))
                rows, offset, reset = new_rows(run_dir, offset)
                self._json({"rows": rows, "offset": offset, "reset": reset})
            elif url.path == "/api/config":
                path = run_dir / "config.toml"
                if path.is_file():
                    self._send(200, path.read_bytes(), "text/plain; charset=utf-8")
                else:
                    self._error(404, "the run has no config.toml yet")
            elif url.path == "/api/partition":
                self._json({"label_counts": label_counts(run_dir)})
            elif url.path == "/api/refusals":
                self._json({"lines": refusals(run_dir)})
            elif url.path == "/api/presence":
                self._json(presence(run_dir))
            elif url.path == "/api/events":
                self._events(_offset(parse_qs(url.query)))
            else:
                self._error(404, f"no such page: {url.path}")
        except ValueError as exc:
            self._error(400, str(exc))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser went away

    def do_HEAD(self) -> None:  # noqa: N802
        self._error(405, "the dashboard answers GET only")

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD  # noqa: N815 - the base class's names

    def _status(self) -> dict[str, Any]:
        try:
            return read_status(self.server.run_dir).to_json()
        except FedloopError as exc:
            return {"status": "waiting", "detail": str(exc)}

    def _events(self, offset: int) -> None:
        """Server-sent events: `round` for each new line of metrics.jsonl, `reset` when the file was replaced,
        `status` every STATUS_EVERY seconds; until the browser leaves or the server stops."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        if offset == 0:
            self._event("reset", {})  # a browser that reconnects gets the whole history again: it starts over
        last_status = 0.0
        while not self.server.stopping.is_set():
            rows, offset, reset = new_rows(self.server.run_dir, offset)
            if reset:
                self._event("reset", {})
            for row in rows:
                self._event("round", row)
            if time.monotonic() - last_status >= STATUS_EVERY or rows:
                self._event("status", self._status())
                last_status = time.monotonic()
            self.wfile.write(b": ping\n\n")
            self.wfile.flush()
            self.server.stopping.wait(POLL)

    def _event(self, name: str, data: Any) -> None:
        self.wfile.write(f"event: {name}\ndata: {json.dumps(data, allow_nan=False, default=str)}\n\n".encode())

    def _json(self, obj: Any) -> None:
        self._send(200, json.dumps(obj, allow_nan=False, default=str).encode(), "application/json")

    def _error(self, code: int, message: str) -> None:
        self._send(code, json.dumps({"error": message}).encode(), "application/json")

    def _send(self, code: int, body: bytes, kind: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'self'; style-src 'self' 'unsafe-inline'")
        self.end_headers()
        self.wfile.write(body)


def _offset(query: dict[str, list[str]]) -> int:
    raw = query.get("offset", ["0"])[-1]
    if not raw.isdigit():
        raise ValueError(f"offset = {raw!r}: expected a byte offset (an integer >= 0)")
    return int(raw)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, address: tuple[str, int], run_dir: Path):
        self.run_dir = run_dir
        self.stopping = threading.Event()
        super().__init__(address, _Handler)


class Dashboard:
    """A dashboard of `run_dir` on host:port (port 0: any free one). `wait`: the directory may not exist yet (a run
    started with --dashboard creates it); otherwise it must hold a run."""

    def __init__(self, run_dir: str | Path, host: str = "127.0.0.1", port: int = 8050, wait: bool = False):
        self.run_dir = Path(run_dir)
        if not wait:
            read_status(self.run_dir)  # a clear error for a directory that is missing or holds no run
        try:
            self._server = _Server((host, port), self.run_dir)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"{host}:{port} is in use: pick another port with --port (or --dashboard PORT)"
                                  ) from None
            raise ConfigError(f"cannot serve the dashboard on {host}:{port} ({exc.strerror})") from None
        self.host = host
        self.port = int(self._server.server_address[1])
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> Dashboard:
        """Serve in a background thread (beside a run)."""
        self._thread = threading.Thread(target=self._server.serve_forever, name="fedloop-dashboard", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until interrupted."""
        try:
            self._server.serve_forever()
        finally:
            self.stop()

    def stop(self) -> None:
        self._server.stopping.set()
        self._server.shutdown() if self._thread is not None else None
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
