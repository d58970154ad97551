"""A self-signed server certificate (CA-less: it is its own issuer) and bcrypt-hashed users for the
tests of TLS and basic auth (hosttune.webconfig)."""

from __future__ import annotations

import datetime
import ipaddress
import os

import bcrypt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed(directory: str, name: str = "server") -> tuple[str, str]:
    """<directory>/<name>.crt and .key: a certificate for localhost and 127.0.0.1, valid a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    crt, pem = os.path.join(directory, f"{name}.crt"), os.path.join(directory, f"{name}.key")
    with open(crt, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(pem, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return crt, pem


def bcrypt_hash(password: str, cost: int = 4) -> str:
    """Cost 4, bcrypt's lowest: the tests check the format and the cache, not the cost."""
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode()


def web_config(directory: str, users: dict[str, str], tls: bool = True) -> str:
    """<directory>/web-config.yml with a fresh self-signed certificate (when `tls`) and `users`
    ({name: password}); returns its path."""
    lines = []
    if tls:
        crt, key = self_signed(directory)
        lines += ["tls_server_config:", f"  cert_file: {os.path.basename(crt)}", f"  key_file: {key}"]
    if users:
        lines.append("basic_auth_users:")
        lines += [f"  {user}: '{bcrypt_hash(password)}'" for user, password in users.items()]
    path = os.path.join(directory, "web-config.yml")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path
