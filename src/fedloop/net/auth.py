"""Who is calling: clients authenticate by a per-client bearer token or by a mutual-TLS certificate on the
allowlist, on every call and before they can see any params."""

from __future__ import annotations

from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..errors import ConfigError
from .certs import fingerprint


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


def read_allowlist(path: str | Path) -> dict[str, int]:
    """certificate fingerprint -> client id, from lines "<client id> <sha256 fingerprint>" (`fedloop certs`
    writes clients.txt); removing a line revokes that certificate."""
    allowed: dict[str, int] = {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the client allowlist ({exc.strerror})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit() or len(parts[1]) != 64:
            raise ConfigError(f"{path}:{n}: expected '<client id> <sha256 certificate fingerprint>'")
        allowed[parts[1].lower()] = int(parts[0])
    return allowed


class Authenticator:
    """The client id behind a call's bearer token, or behind its client certificate (mTLS): the certificate must be
    on the allowlist under the id its common name claims."""

    def __init__(self, tokens: dict[str, int] | None, mutual_tls: bool = False,
                 allowlist: dict[str, int] | None = None):
        if not tokens and not mutual_tls:
            raise ConfigError("the server needs client authentication: a token file or mutual TLS")
        if mutual_tls and allowlist is None:
            raise ConfigError("mutual TLS needs the allowlist of issued client certificates (clients.txt)")
        self.tokens = tokens or {}
        self.mutual_tls = mutual_tls
        self.allowlist = allowlist or {}

    def identify(self, context: grpc.aio.ServicerContext) -> int | str:
        """The caller's client id, or why it is refused."""
        if self.mutual_tls:
            auth = context.auth_context()
            names, pems = auth.get("x509_common_name", []), auth.get("x509_pem_cert", [])
            name = names[0].decode() if names else ""
            if not (name.startswith("client-") and name[7:].isdigit()) or not pems:
                return f"certificate {name!r} is not a fedloop client"
            if self.allowlist.get(fingerprint(pems[0])) != int(name[7:]):
                return f"certificate {name!r} is not on the allowlist (revoked, or never issued)"
            return int(name[7:])
        auth = dict(context.invocation_metadata() or ()).get("authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else ""
        return self.tokens.get(token, "unknown or revoked client token")


def refuse_ca_key(cert_dir: str | Path) -> None:
    """ConfigError when the CA's private key can be read next to the server's certificates: whoever reads the
    server's files could then issue client certificates."""
    d = Path(cert_dir)
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        ca_public = x509.load_pem_x509_certificate((d / "ca.pem").read_bytes()).public_key().public_bytes(*spki)
    except (OSError, ValueError):
        return  # no readable ca.pem: server_credentials reports it
    for path in sorted(d.iterdir()):
        if not path.is_file() or path.stat().st_size > 1 << 16:
            continue
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), None)
        except (OSError, ValueError, TypeError):
            continue
        if key.public_key().public_bytes(*spki) == ca_public:
            raise ConfigError(f"{path}: the CA's private key lies next to the server's certificates; move it "
                              f"away (`fedloop certs DIR` keeps it in DIR-ca/)")


def authenticator(cert_dir: str | Path | None, tokens: str | Path | None, mutual_tls: bool,
                  allowlist: str | Path | None = None) -> Authenticator:
    """The server's authenticator from `fedloop server`'s options: tokens (default DIR/tokens.txt of --certs) or
    mutual TLS with the allowlist (default DIR/clients.txt)."""
    if cert_dir is not None:
        refuse_ca_key(cert_dir)
    if mutual_tls:
        if allowlist is None and cert_dir is None:
            raise ConfigError("mutual TLS needs --certs DIR (or --allowlist FILE)")
        return Authenticator(None, True, read_allowlist(allowlist or Path(cert_dir or ".") / "clients.txt"))
    if tokens is None and cert_dir is not None and (Path(cert_dir) / "tokens.txt").exists():
        tokens = Path(cert_dir) / "tokens.txt"
    return Authenticator(read_tokens(tokens) if tokens is not None else None)
