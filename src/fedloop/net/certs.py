"""`fedloop certs DIR`: a development CA, a server certificate for loopback and the given hosts, and client
credentials: a certificate per client for mutual TLS (listed by fingerprint in the allowlist clients.txt) and a
token for token authentication (tokens.txt). The CA's private key goes to DIR-ca/, apart from what the server
reads: the server refuses to start with it next to its certificates. `--add ID ...` issues more clients later."""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..errors import ConfigError
from ..store import atomic_write_bytes, atomic_write_text

VALID_DAYS = 365


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedloop development"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _issue(subject: str, key: ec.EllipticCurvePrivateKey, ca_key: ec.EllipticCurvePrivateKey,
           ca_name: x509.Name, *, ca: bool = False, hosts: list[str] | None = None,
           usage: x509.ObjectIdentifier | None = None) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(ca_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=VALID_DAYS))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if hosts:
        names: list[x509.GeneralName] = []
        for h in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                names.append(x509.DNSName(h))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def fingerprint(cert_pem: bytes) -> str:
    """The SHA-256 fingerprint of a PEM certificate, in hex: how the allowlist names an issued certificate."""
    return x509.load_pem_x509_certificate(cert_pem).fingerprint(hashes.SHA256()).hex()


def ca_dir(directory: str | Path) -> Path:
    """Where the CA's private key of `fedloop certs DIR` lives: DIR-ca, beside DIR, not in it."""
    d = Path(directory)
    return d.parent / f"{d.name}-ca"


def _private(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data, mode=0o600)  # never readable by others, not even for a moment


def make_certs(directory: str | Path, clients: list[str], hosts: list[str] | None = None,
               force: bool = False) -> Path:
    """Write ca.pem, server.pem/server.key, client-<id>.pem/.key/.token, tokens.txt ("<id> <token>" lines) and
    clients.txt ("<id> <certificate fingerprint>" lines) to `directory`, and the CA's key to its -ca sibling. An
    existing CA or token file is only replaced with `force` (replacing it revokes every credential it issued). Both
    directories get a .gitignore that keeps their keys and tokens out of a repository."""
    out = Path(directory)
    if not clients:
        raise ConfigError("--clients must be at least 1")
    existing = [p for p in (out / "ca.pem", out / "tokens.txt", ca_dir(out) / "ca.key") if p.exists()]
    if existing and not force:
        raise ConfigError(f"{existing[0]}: already exists; replacing it revokes every credential it issued "
                          f"(--force replaces it, --add issues more clients)")
    out.mkdir(parents=True, exist_ok=True)
    ca_dir(out).mkdir(mode=0o700, exist_ok=True)
    for d in (out, ca_dir(out)):
        atomic_write_text(d / ".gitignore", "# private keys and tokens of `fedloop certs`: never commit them\n*\n")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("fedloop development CA")
    ca_cert = _issue("fedloop development CA", ca_key, ca_key, ca_name, ca=True)
    pem = serialization.Encoding.PEM
    atomic_write_bytes(out / "ca.pem", ca_cert.public_bytes(pem))
    _private(ca_dir(out) / "ca.key", _key_pem(ca_key))
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _issue("fedloop server", server_key, ca_key, ca_name,
                    hosts=["localhost", "127.0.0.1", "::1", *(hosts or [])], usage=ExtendedKeyUsageOID.SERVER_AUTH)
    atomic_write_bytes(out / "server.pem", server.public_bytes(pem))
    _private(out / "server.key", _key_pem(server_key))
    for name in ("tokens.txt", "clients.txt"):
        atomic_write_text(out / name, "")
    return add_clients(out, clients)


def add_clients(directory: str | Path, clients: list[str]) -> Path:
    """Issue credentials for more clients with the CA of `fedloop certs DIR`, appending them to tokens.txt and
    clients.txt."""
    out = Path(directory)
    key_file = ca_dir(out) / "ca.key"
    try:
        ca_key = serialization.load_pem_private_key(key_file.read_bytes(), None)
        ca_name = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes()).subject
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{key_file}: cannot read the CA of {out} ({exc})") from None
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    pem = serialization.Encoding.PEM
    tokens, allowed = [], []
    for cid in clients:
        if not cid.isdigit():
            raise ConfigError(f"client id {cid!r}: expected a non-negative integer")
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(f"client-{cid}", key, ca_key, ca_name, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
        atomic_write_bytes(out / f"client-{cid}.pem", cert.public_bytes(pem))
        _private(out / f"client-{cid}.key", _key_pem(key))
        token = secrets.token_urlsafe(32)
        _private(out / f"client-{cid}.token", (token + "\n").encode())
        tokens.append(f"{cid} {token}\n")
        allowed.append(f"{cid} {fingerprint(cert.public_bytes(pem))}\n")
    for name, lines in (("tokens.txt", tokens), ("clients.txt", allowed)):
        old = (out / name).read_text() if (out / name).exists() else ""
        _private(out / name, (old + "".join(lines)).encode())
    return out
