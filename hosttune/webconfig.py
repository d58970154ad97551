"""TLS and basic auth for hosttune's HTTP endpoints (the agent's metrics/status server, `hosttune
serve`), from a file in the Prometheus exporter-toolkit web-config format (the one node_exporter
and every exporter read with --web.config.file; docs/monitoring.md):

    tls_server_config:
      cert_file: server.crt          # relative paths: from the web-config file's directory
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # optional, with client_ca_file
      client_ca_file: ca.crt
      min_version: TLS12             # TLS12 (default) or TLS13; max_version likewise
    http_server_config:
      headers: {X-Content-Type-Options: nosniff}
    basic_auth_users:
      prometheus: $2b$12$...         # bcrypt hashes (htpasswd -nBC 12 "" | tr -d ':\\n')

One schema (SCHEMA) checked with hosttune.safejson on the bounded YAML of hosttune.safeyaml. What
the format has but hosttune does not implement (inline cert/key, cipher_suites, curve
preferences, client SANs, rate_limit, HTTP/2, TLS below 1.2, client certificates requested but
not verified) is refused by name (UNSUPPORTED), never ignored. An empty file means plain HTTP
without auth, as in exporter-toolkit.

Verified credentials are cached (bounded, keyed by a digest of user, hash and password) so
bcrypt's cost (about 50-250 ms at cost 10-12) is paid once per credential, not per scrape, as
exporter-toolkit does; an unknown user is checked against a dummy hash so that timing does not
tell which users exist. bcrypt is the `web` extra's, imported only when basic_auth_users is set.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hosttune import safejson, safeyaml
from hosttune.errors import HosttuneError
from hosttune.safejson import Bool, Map, Obj, Str

if TYPE_CHECKING:
    import ssl

MAX_BYTES = 64 << 10  # a web config is a few hundred bytes
MAX_USERS = 100  # basic auth is for a few scrapers (exporter-toolkit says the same)
CACHE_SIZE = 256  # verified (user, password) pairs remembered
REALM = "hosttune"
CHALLENGE = f'Basic realm="{REALM}"'

_VERSIONS = {"TLS12": "TLSv1_2", "TLS13": "TLSv1_3"}  # ssl.TLSVersion names
# exporter-toolkit's client_auth_type -> (ssl's verify mode, needs client_ca_file); the two that
# request a certificate without verifying it have no equivalent in Python's ssl
_CLIENT_AUTH = {
    "NoClientCert": ("CERT_NONE", False),
    "VerifyClientCertIfGiven": ("CERT_OPTIONAL", True),
    "RequireAndVerifyClientCert": ("CERT_REQUIRED", True),
}
# the header names exporter-toolkit accepts, with the values it allows ("" = any text)
_HEADERS = {
    "Content-Security-Policy": r"[^\x00-\x1f\x7f]*",
    "X-Frame-Options": r"(?i:deny|sameorigin)",
    "X-Content-Type-Options": r"(?i:nosniff)",
    "X-XSS-Protection": r"[^\x00-\x1f\x7f]*",
    "Strict-Transport-Security": r"[^\x00-\x1f\x7f]*",
}
_PATH = Str(max_len=4096, pattern=r"[^\x00]+")
_BCRYPT = Str(max_len=60, pattern=r"\$2[aby]?\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")

SCHEMA = Obj({
    "tls_server_config": Obj({
        "cert_file": _PATH,
        "key_file": _PATH,
        "client_auth_type": Str(max_len=40, pattern="|".join(_CLIENT_AUTH)),
        "client_ca_file": _PATH,
        "min_version": Str(max_len=10, pattern="|".join(_VERSIONS)),
        "max_version": Str(max_len=10, pattern="|".join(_VERSIONS)),
    }, required=("cert_file", "key_file"), closed=True),
    "http_server_config": Obj({
        "http2": Bool(),  # only false: HTTP/1.1 is served (checked below)
        "headers": Obj({name: Str(max_len=1024, pattern=value) for name, value in _HEADERS.items()}, closed=True),
    }, closed=True),
    # a user name holds no ':' (Basic splits user and password at the first one)
    "basic_auth_users": Map(_BCRYPT, max_len=MAX_USERS),
}, closed=True)

# valid in exporter-toolkit's format, not implemented here: refused by name before the schema
UNSUPPORTED = {
    "rate_limit": "rate limiting",
    "tls_server_config.cert": "an inline certificate (use cert_file)",
    "tls_server_config.key": "an inline key (use key_file)",
    "tls_server_config.client_ca": "an inline client CA (use client_ca_file)",
    "tls_server_config.cipher_suites": "Go cipher suite names (OpenSSL's defaults are used)",
    "tls_server_config.curve_preferences": "curve preferences",
    "tls_server_config.prefer_server_cipher_suites": "cipher preference",
    "tls_server_config.client_allowed_sans": "client SAN matching",
}
_UNSUPPORTED_VALUES = {
    ("tls_server_config.client_auth_type", "RequestClientCert"): "a client certificate requested but not verified",
    ("tls_server_config.client_auth_type", "RequireAnyClientCert"): "a client certificate required but not verified",
    ("tls_server_config.min_version", "TLS10"): "TLS 1.0", ("tls_server_config.min_version", "TLS11"): "TLS 1.1",
    ("tls_server_config.max_version", "TLS10"): "TLS 1.0", ("tls_server_config.max_version", "TLS11"): "TLS 1.1",
    ("http_server_config.http2", True): "HTTP/2 (set http2: false; HTTP/1.1 is served)",
}


@dataclass(eq=False)
class WebConfig:
    """A loaded web config: the TLS context (None: plain HTTP), the users (empty: no auth), the
    extra response headers."""
    path: str | None = None
    tls: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)
    headers: tuple[tuple[str, str], ...] = ()
    # the TLS files as given (resolved), for servers that take PEM bytes (gRPC)
    cert_file: str | None = None
    key_file: str | None = None
    client_ca_file: str | None = None
    _cache: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    def authorized(self, header: bytes | str | None) -> bool:
        """Whether an Authorization header's value lets the request in (always, without users)."""
        if not self.users:
            return True
        if isinstance(header, str):
            header = header.encode("latin-1", "replace")
        if not header or header[:6].lower() != b"basic ":
            return False
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        user_b, sep, password = decoded.partition(b":")
        if not sep:
            return False
        user = user_b.decode("utf-8", "replace")
        hashed = self.users.get(user)
        key = hashlib.sha256(b"\0".join([user_b, hashed or b"", password])).digest()
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        import bcrypt  # present: load() checked it

        # an unknown user costs a bcrypt check too (against a configured hash, so at the same cost,
        # and refused whatever its result): the answer's timing does not tell users apart
        ok = bcrypt.checkpw(password, hashed or next(iter(self.users.values()))) and hashed is not None
        with self._lock:
            self._cache[key] = ok
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return ok


def _unsupported(doc: Any, where: str) -> None:
    if not isinstance(doc, dict):
        return
    sections = {"": doc, **{k: v for k, v in doc.items() if isinstance(v, dict)}}
    for section, values in sections.items():
        for key, value in values.items():
            name = f"{section}.{key}" if section else str(key)
            if name in UNSUPPORTED:
                raise HosttuneError(f"{UNSUPPORTED[name]} is not supported by hosttune: remove it", where=f"{where}: {name}")
            try:
                what = _UNSUPPORTED_VALUES.get((name, value))
            except TypeError:  # an unhashable value: the schema names it
                what = None
            if what is not None:
                raise HosttuneError(f"{value!r}: {what} is not supported by hosttune", where=f"{where}: {name}")


def _ssl() -> Any:
    """The ssl module, imported only for TLS: the agent keeps libssl out of its process unless it
    serves TLS (hosttune/agent/__main__.py blocks the import with a None in sys.modules)."""
    if "ssl" in sys.modules and sys.modules["ssl"] is None:
        del sys.modules["ssl"]
    import ssl

    return ssl


def _file(base: str, value: str) -> str:
    return value if os.path.isabs(value) else os.path.join(base, value)


def parse(doc: Any, where: str, base: str = ".") -> WebConfig:
    """A loaded document -> WebConfig; `where` names the file in errors, `base` is the directory
    relative paths start from. Certificates and keys are read here: a bad one fails at start."""
    if doc is None:
        return WebConfig(path=where)
    _unsupported(doc, where)
    safejson.check(doc, SCHEMA, where)
    tls_raw = doc.get("tls_server_config")
    tls = None
    if tls_raw is not None:
        ssl = _ssl()
        lo = ssl.TLSVersion[_VERSIONS[tls_raw.get("min_version", "TLS12")]]
        hi = ssl.TLSVersion[_VERSIONS[tls_raw.get("max_version", "TLS13")]]
        if lo > hi:
            raise HosttuneError("min_version is above max_version", where=f"{where}: tls_server_config.min_version")
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert, key = _file(base, tls_raw["cert_file"]), _file(base, tls_raw["key_file"])
        try:
            tls.load_cert_chain(cert, key)
        except FileNotFoundError as exc:
            raise HosttuneError(f"cannot read {exc.filename or cert + ' or ' + key} ({exc.strerror})",
                                where=f"{where}: tls_server_config.cert_file/key_file") from None
        except (ssl.SSLError, OSError) as exc:
            raise HosttuneError(f"{cert} and {key} are not a PEM certificate and its key ({exc.strerror or exc})",
                                where=f"{where}: tls_server_config.cert_file/key_file") from None
        tls.minimum_version, tls.maximum_version = lo, hi
        mode, needs_ca = _CLIENT_AUTH[tls_raw.get("client_auth_type", "NoClientCert")]
        ca = tls_raw.get("client_ca_file")
        if needs_ca and ca is None:
            raise HosttuneError(f"{tls_raw['client_auth_type']} needs client_ca_file",
                                where=f"{where}: tls_server_config.client_ca_file")
        if ca is not None:
            if not needs_ca:
                raise HosttuneError("client_ca_file needs client_auth_type RequireAndVerifyClientCert "
                                    "(or VerifyClientCertIfGiven)", where=f"{where}: tls_server_config.client_auth_type")
            try:
                tls.load_verify_locations(cafile=_file(base, ca))
            except (ssl.SSLError, OSError) as exc:
                raise HosttuneError(f"cannot load {_file(base, ca)} as PEM CA certificates "
                                    f"({getattr(exc, 'strerror', None) or exc})",
                                    where=f"{where}: tls_server_config.client_ca_file") from None
        tls.verify_mode = getattr(ssl, mode)
    users_raw = doc.get("basic_auth_users") or {}
    for user in users_raw:
        if ":" in user or not user or len(user) > 255 or not user.isprintable():
            raise HosttuneError("a user name is 1 to 255 printable characters without ':'",
                                where=f"{where}: basic_auth_users.{safeyaml.brief(user, 40)}")
    if users_raw:
        try:
            import bcrypt  # noqa: F401 - only needed with users
        except ModuleNotFoundError:
            raise HosttuneError("basic_auth_users needs the bcrypt package: pip install 'hosttune[web]'",
                                where=f"{where}: basic_auth_users") from None
    headers = tuple((k, v) for k, v in ((doc.get("http_server_config") or {}).get("headers") or {}).items() if v)
    files = {}
    if tls_raw is not None:
        files = {name: _file(base, tls_raw[name]) for name in ("cert_file", "key_file", "client_ca_file")
                 if name in tls_raw}
    return WebConfig(path=where, tls=tls, users={u: h.encode("ascii") for u, h in users_raw.items()},
                     headers=headers, **files)


def load(path: str, where: str | None = None) -> WebConfig:
    """Read and check a web-config file; errors name the file (or `where`, e.g. an option) and
    the field, exit 2."""
    shown = f"{where} {path}" if where else path
    doc = safeyaml.load_file(path, max_bytes=MAX_BYTES)
    return parse(doc, shown, base=os.path.dirname(os.path.abspath(path)))
