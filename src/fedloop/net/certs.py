"""`fedloop certs DIR`: a development CA, a server certificate for loopback and the given hosts, and client
credentials (a certificate per client for mutual TLS, and a token file for token authentication)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

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


def make_certs(directory: str | Path, clients: list[str], hosts: list[str] | None = None) -> Path:
    """Write ca.pem, server.pem/server.key, client-<id>.pem/.key and tokens.txt ("<id> <token>" lines)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("fedloop development CA")
    ca_cert = _issue("fedloop development CA", ca_key, ca_key, ca_name, ca=True)
    pem = serialization.Encoding.PEM
    atomic_write_bytes(out / "ca.pem", ca_cert.public_bytes(pem))
    atomic_write_bytes(out / "ca.key", _key_pem(ca_key))
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _issue("fedloop server", server_key, ca_key, ca_name,
                    hosts=["localhost", "127.0.0.1", "::1", *(hosts or [])], usage=ExtendedKeyUsageOID.SERVER_AUTH)
    atomic_write_bytes(out / "server.pem", server.public_bytes(pem))
    atomic_write_bytes(out / "server.key", _key_pem(server_key))
    lines = []
    for cid in clients:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(f"client-{cid}", key, ca_key, ca_name, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
        atomic_write_bytes(out / f"client-{cid}.pem", cert.public_bytes(pem))
        atomic_write_bytes(out / f"client-{cid}.key", _key_pem(key))
        token = secrets.token_urlsafe(32)
        atomic_write_text(out / f"client-{cid}.token", token + "\n")
        lines.append(f"{cid} {token}")
    atomic_write_text(out / "tokens.txt", "\n".join(lines) + "\n")
    for key_file in out.glob("*.key"):
        key_file.chmod(0o600)
    for token_file in [*out.glob("*.token"), out / "tokens.txt"]:
        token_file.chmod(0o600)
    return out
