"""Who is calling: clients authenticate by a per-client bearer token or by a mutual-TLS certificate, on every
call and before they can see any params."""

from __future__ import annotations

from pathlib import Path

import grpc

from ..errors import ConfigError


def read_tokens(path: str | Path) -> dict[str, int]:
    """token -> client id, from lines "<client id> <token>" (the file `fedloop certs` writes)."""
    tokens: dict[str, int] = {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the token file ({exc.strerror})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise ConfigError(f"{path}:{n}: expected '<client id> <token>' with an integer client id")
        tokens[parts[1]] = int(parts[0])
    return tokens


class Authenticator:
    """The client id behind a call's bearer token, or behind its client certificate (mTLS)."""

    def __init__(self, tokens: dict[str, int] | None, mutual_tls: bool):
        if not tokens and not mutual_tls:
            raise ConfigError("the server needs client authentication: a token file or mutual TLS")
        self.tokens = tokens or {}
        self.mutual_tls = mutual_tls

    def identify(self, context: grpc.aio.ServicerContext) -> int | str:
        """The caller's client id, or why it is refused."""
        if self.mutual_tls:
            names = context.auth_context().get("x509_common_name", [])
            name = names[0].decode() if names else ""
            if name.startswith("client-") and name[7:].isdigit():
                return int(name[7:])
            return f"certificate {name!r} is not a fedloop client"
        auth = dict(context.invocation_metadata() or ()).get("authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else ""
        return self.tokens.get(token, "unknown or revoked client token")
