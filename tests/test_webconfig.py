"""hosttune.webconfig (the exporter-toolkit web-config format) and the agent's server with it: a
real TLS server on a free port, real bcrypt hashes, urllib and ssl as the client."""

from __future__ import annotations

import base64
import os
import ssl
import urllib.error
import urllib.request

import bcrypt
import pytest

from hosttune import webconfig
from hosttune.agent import config as agent_config
from hosttune.agent.server import StatusServer
from hosttune.errors import HosttuneError
from tests.tlsutil import bcrypt_hash, self_signed, web_config


def _write(tmp_path, text: str) -> str:
    path = tmp_path / "web.yml"
    path.write_text(text)
    return str(path)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_a_full_config_gives_a_tls_context_users_and_headers(tmp_path):
    crt, key = self_signed(str(tmp_path))
    path = _write(tmp_path, f"""\
tls_server_config:
  cert_file: {os.path.basename(crt)}
  key_file: {key}
  min_version: TLS13
http_server_config:
  http2: false
  headers:
    X-Content-Type-Options: nosniff
basic_auth_users:
  prom: '{bcrypt_hash("s3cret")}'
""")
    web = webconfig.load(path)
    assert web.scheme == "https"
    assert web.tls.minimum_version == ssl.TLSVersion.TLSv1_3
    assert web.headers == (("X-Content-Type-Options", "nosniff"),)
    assert web.authorized(basic("prom", "s3cret"))
    for header in (basic("prom", "wrong"), basic("other", "s3cret"), None, "", "Bearer x", "Basic !!!",
                   "Basic " + base64.b64encode(b"no-colon").decode()):
        assert not web.authorized(header), header


def test_an_empty_file_is_plain_http_without_auth(tmp_path):
    web = webconfig.load(_write(tmp_path, ""))
    assert web.tls is None and web.scheme == "http" and web.authorized(None)


def test_verified_credentials_are_cached_so_bcrypt_runs_once(tmp_path, monkeypatch):
    web = webconfig.load(_write(tmp_path, f"basic_auth_users:\n  prom: '{bcrypt_hash('pw')}'\n"))
    calls = []
    real = bcrypt.checkpw
    monkeypatch.setattr(bcrypt, "checkpw", lambda pw, h: calls.append(pw) or real(pw, h))
    for _ in range(5):
        assert web.authorized(basic("prom", "pw"))
        assert not web.authorized(basic("prom", "bad"))
    assert calls == [b"pw", b"bad"]
    # an unknown user costs one bcrypt check too (timing does not tell users apart), and is refused
    assert not web.authorized(basic("nobody", "pw")) and len(calls) == 3


@pytest.mark.parametrize("text, field", [
    ("rate_limit: {interval: 1s, burst: 3}\n", "rate_limit"),
    ("tls_server_config: {cert_file: a, key_file: b, cipher_suites: [TLS_AES_128_GCM_SHA256]}\n",
     "tls_server_config.cipher_suites"),
    ("tls_server_config: {cert: abc, key_file: b}\n", "tls_server_config.cert"),
    ("tls_server_config: {cert_file: a, key_file: b, client_auth_type: RequestClientCert}\n",
     "tls_server_config.client_auth_type"),
    ("tls_server_config: {cert_file: a, key_file: b, min_version: TLS11}\n", "tls_server_config.min_version"),
    ("http_server_config: {http2: true}\n", "http_server_config.http2"),
    ("http_server_config: {headers: {X-Powered-By: me}}\n", "headers.'X-Powered-By'"),
    ("http_server_config: {headers: {X-Frame-Options: allow}}\n", "headers.'X-Frame-Options'"),
    ("tls_config: {cert_file: a, key_file: b}\n", "tls_config"),  # node_exporter's old name
    ("tls_server_config: {cert_file: a}\n", "tls_server_config.key_file"),
    ("basic_auth_users: {prom: plaintext}\n", "basic_auth_users.prom"),
    ("basic_auth_users: [prom]\n", "basic_auth_users"),
    ("tls_server_config: {cert_file: /nonexistent.crt, key_file: /nonexistent.key}\n", "cert_file/key_file"),
    ("tls_server_config: {cert_file: a, key_file: b, min_version: TLS13, max_version: TLS12}\n", "min_version"),
])
def test_unsupported_or_wrong_fields_are_refused_by_name(tmp_path, text, field):
    path = _write(tmp_path, text)
    with pytest.raises(HosttuneError) as err:
        webconfig.load(path)
    message = str(err.value)
    assert path in message and field in message and "\n" not in message, message
    assert err.value.exit_code == 2


def test_a_user_name_with_a_colon_is_refused(tmp_path):
    with pytest.raises(HosttuneError, match="without ':'"):
        webconfig.load(_write(tmp_path, f"basic_auth_users:\n  'a:b': '{bcrypt_hash('x')}'\n"))


@pytest.fixture
def tls_server(tmp_path):
    path = web_config(str(tmp_path), {"prom": "s3cret"})
    server = StatusServer("127.0.0.1", 0, lambda: "up 1\n", lambda: {"ok": True}, webconfig.load(path))
    server.start()
    yield server, str(tmp_path / "server.crt")
    server.stop()


def _get(url: str, cafile: str, auth: str | None = None):
    req = urllib.request.Request(url, headers={"Authorization": auth} if auth else {})
    ctx = ssl.create_default_context(cafile=cafile)
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def test_the_agent_server_serves_tls_and_asks_for_basic_auth_on_every_path(tls_server):
    server, crt = tls_server
    base = f"https://127.0.0.1:{server.address[1]}"
    status, _, body = _get(base + "/metrics", crt, basic("prom", "s3cret"))
    assert (status, body) == (200, b"up 1\n")
    for path in ("/metrics", "/status", "/", "/nothing"):
        for auth in (None, basic("prom", "wrong")):
            status, headers, _ = _get(base + path, crt, auth)
            assert status == 401 and headers["WWW-Authenticate"] == 'Basic realm="hosttune"', (path, auth)
    # plain HTTP on the TLS port gets no answer, and the server keeps serving
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(f"http://127.0.0.1:{server.address[1]}/metrics", timeout=10).read()
    assert _get(base + "/status", crt, basic("prom", "s3cret"))[0] == 200


def test_a_reloaded_web_config_applies_to_the_next_connection(tls_server, tmp_path):
    server, crt = tls_server
    other = tmp_path / "other"
    other.mkdir()
    web = webconfig.parse({"tls_server_config": {"cert_file": crt, "key_file": str(tmp_path / "server.key")},
                           "basic_auth_users": {"new": bcrypt_hash("pw2")}}, "new.yml")
    server.web = web
    base = f"https://127.0.0.1:{server.address[1]}"
    assert _get(base + "/metrics", crt, basic("prom", "s3cret"))[0] == 401
    assert _get(base + "/metrics", crt, basic("new", "pw2"))[0] == 200


def test_agent_web_config_file_is_checked_with_the_config(tmp_path):
    bad = _write(tmp_path, "rate_limit: {}\n")
    with pytest.raises(HosttuneError) as err:
        agent_config.parse({"agent": {"web_config_file": bad}}, "hosttune.yaml")
    assert "hosttune.yaml" in str(err.value) and "rate_limit" in str(err.value) and bad in str(err.value)
    with pytest.raises(HosttuneError, match="agent.web_config_file.*absolute"):
        agent_config.parse({"agent": {"web_config_file": "web.yml"}}, "hosttune.yaml")
    good = web_config(str(tmp_path), {"prom": "x"})
    cfg = agent_config.parse({"agent": {"web_config_file": good}}, "hosttune.yaml")
    assert cfg.web is not None and cfg.web.scheme == "https" and set(cfg.web.users) == {"prom"}


# -- hosttune serve --web-config-file: a real server process ----------------------------------------
@pytest.fixture(scope="module")
def tls_serve(tmp_path_factory):
    from hosttune.model import repo as model_repo
    from tests.serverproc import Server

    tmp = tmp_path_factory.mktemp("serve-web")
    model_repo.sample(str(tmp / "models"), variant="tiny", int8=False)
    path = web_config(str(tmp), {"prom": "s3cret"})
    srv = Server("--repo", str(tmp / "models"), "--model", "tiny", "--grpc-port", "0", "--metrics_enable",
                 "--web-config-file", path)
    yield srv, str(tmp / "server.crt")
    srv.stop()


def test_serve_answers_rest_over_tls_only_with_basic_auth_on_every_path(tls_serve):
    import json

    srv, crt = tls_serve
    assert "listening on https://" in srv.banner and "grpcs://" in srv.banner and "basic auth (1 users)" in srv.banner
    base = f"https://127.0.0.1:{srv.port}"
    good = basic("prom", "s3cret")
    assert _get(base + "/v2/health/ready", crt, good)[0] == 200
    status, _, body = _get(base + "/metrics", crt, good)
    assert status == 200 and b"ovms_requests_success" in body
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32",
                                   "data": [0.0] * 3072}]}).encode()
    for path, data in (("/v2/health/ready", None), ("/metrics", None), ("/v2/models/tiny/infer", body),
                       ("/nothing", None)):
        for auth in (None, basic("prom", "wrong"), basic("nobody", "s3cret")):
            req = urllib.request.Request(base + path, data=data, headers={"Authorization": auth} if auth else {})
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(req, timeout=10, context=ssl.create_default_context(cafile=crt))
            assert err.value.code == 401 and err.value.headers["WWW-Authenticate"] == 'Basic realm="hosttune"'
    # the direct lane's infer, with auth
    req = urllib.request.Request(base + "/v2/models/tiny/infer", data=body, headers={"Authorization": good})
    with urllib.request.urlopen(req, timeout=30, context=ssl.create_default_context(cafile=crt)) as resp:
        assert resp.status == 200 and json.loads(resp.read())["outputs"]


def test_serve_grpc_takes_tls_and_basic_auth_from_the_same_file(tls_serve):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    srv, crt = tls_serve
    client = grpcclient.InferenceServerClient(f"localhost:{srv.grpc_port}", ssl=True, root_certificates=crt)
    assert client.is_server_live(headers={"authorization": basic("prom", "s3cret")})
    for headers in (None, {"authorization": basic("prom", "wrong")}):
        with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
            client.is_server_live(headers=headers)
