"""The agent's REST API on a real aiohttp server on 127.0.0.1, with a config-backed control."""

from __future__ import annotations

import asyncio
import json
import socket
import stat
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from agent_api_server import SECRET_URL, ConfigControl, ServerThread, make_config, token_file
from drasyl.agent.api import AgentError, ApiServer, TokenFile, config_status, parse_listen
from drasyl.errors import ConfigError

TOKEN = "t0ken-for-tests"
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def call(server: ServerThread, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         token: str | None = TOKEN, method: str | None = None) -> tuple[int, str, dict]:
    """(status, Content-Type, JSON body) of one request; errors are answers too."""
    headers = dict(headers or {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(server.url + path, data=body, headers=headers, method=method)
    try:
        with NO_PROXY.open(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], json.loads(exc.read())


def post(server: ServerThread, verb: str, url: str) -> dict:
    status, _, answer = call(server, f"/network/{verb}", json.dumps({"config_url": url}).encode(),
                             {"Content-Type": "application/json"})
    assert status == 200, answer
    return answer


@pytest.fixture
def server(tmp_path):
    with ServerThread(ConfigControl(make_config(tmp_path)), token_file(tmp_path, TOKEN)) as running:
        yield running


def test_status_shows_the_public_key_and_no_secrets(server):
    status, content_type, body = call(server, "/status")
    assert (status, content_type) == (200, "application/json; charset=utf-8")
    config = server.control.config
    assert body == config_status(config)
    assert body["public_key"] == config.identity.public_key_hex
    assert body["networks"][0]["config_url"] == "https://user:***@config.example.com/acme.toml"
    assert body["super_peers"][0]["address"] == "sp.example.org:22527"
    text = json.dumps(body)
    assert config.identity.secret_key.hex() not in text
    assert config.identity.secret_key[:32].hex() not in text
    assert "secret" not in text


@pytest.mark.parametrize("header, error", [
    (None, "bearer token missing"),
    ("Basic dXNlcjpwdw==", "bearer token missing"),
    ("Bearer ", "bearer token missing"),
    ("Bearer wrong", "token wrong"),
    (f"Bearer {TOKEN}x", "token wrong"),
])
def test_requests_without_the_right_token_get_401(server, header, error):
    for path in ("/status", "/network/add", "/nope"):
        status, _, body = call(server, path, b"{}" if path != "/status" else None,
                               {"Authorization": header} if header else {}, token=None)
        assert (status, body) == (401, {"error": error}), path
    assert len(server.control.config.networks) == 1


def test_token_file_is_read_on_every_request(server, tmp_path):
    assert call(server, "/status")[0] == 200
    (tmp_path / "auth.token").write_text("new-token")
    assert call(server, "/status") == (401, "application/json; charset=utf-8", {"error": "token wrong"})
    assert call(server, "/status", token="new-token")[0] == 200
    (tmp_path / "auth.token").write_text("  \n")
    assert call(server, "/status", token="new-token")[2] == {"error": "token file not found"}
    (tmp_path / "auth.token").unlink()
    assert call(server, "/status", token="new-token")[:3:2] == (500, {"error": "token file not found"})
    fallback = tmp_path / "home" / ".drasyl" / "auth.token"
    fallback.parent.mkdir(parents=True)
    fallback.write_text("fallback-token\n")
    assert call(server, "/status", token="fallback-token")[0] == 200


def test_network_endpoints_edit_config_toml(server):
    config_path = Path(server.control.config.path)
    assert post(server, "add", "https://b.example/net.toml") == {
        "success": True, "message": "Network 'https://b.example/net.toml' added successfully"}
    assert post(server, "disable", "HTTPS://B.example:443/net.toml") == {
        "success": True, "message": "Network 'HTTPS://B.example:443/net.toml' disabled successfully"}
    data = tomllib.loads(config_path.read_text())
    assert data["network"][1] == {"config_url": "https://b.example/net.toml", "disabled": True}
    assert post(server, "enable", "https://b.example/net.toml")["success"] is True
    assert tomllib.loads(config_path.read_text())["network"][1]["disabled"] is False
    assert post(server, "remove", "https://b.example/net.toml") == {
        "success": True, "message": "Network 'https://b.example/net.toml' removed successfully"}
    assert len(tomllib.loads(config_path.read_text())["network"]) == 1
    assert config_path.read_text().startswith("# written by the test\n")


@pytest.mark.parametrize("verb, url, message", [
    ("add", SECRET_URL, "Failed to add network 'https://user:***@config.example.com/acme.toml': "
                        "Network already exists: https://user:***@config.example.com/acme.toml"),
    ("remove", "https://x.example/", "Failed to remove network 'https://x.example/': Network not found: https://x.example/"),
    ("enable", "https://x.example/", "Failed to enable network 'https://x.example/': Network not found: https://x.example/"),
    ("disable", "https://x.example/", "Failed to disable network 'https://x.example/': Network not found: https://x.example/"),
    ("add", "ftp://x.example/", "Failed to add network 'ftp://x.example/': unsupported URL scheme 'ftp' "
                                "(use https://, http:// or file://): 'ftp://x.example/'"),
])
def test_refused_network_requests_say_why(server, verb, url, message):
    before = Path(server.control.config.path).read_bytes()
    assert post(server, verb, url) == {"success": False, "message": message}
    assert Path(server.control.config.path).read_bytes() == before


@pytest.mark.parametrize("body, headers, status, error", [
    (b'{"config_url": "https://b.example/"}', {}, 415, "Content-Type must be application/json"),
    (b'{"config_url": "https://b.example/"}', {"Content-Type": "text/plain"}, 415, "Content-Type must be application/json"),
    (b'{"config_url": ', {"Content-Type": "application/json"}, 400, "the body is not valid JSON"),
    (b'{"url": "https://b.example/"}', {"Content-Type": "application/json"}, 422, 'the body must be {"config_url": "<url>"}'),
    (b'["https://b.example/"]', {"Content-Type": "application/json"}, 422, 'the body must be {"config_url": "<url>"}'),
    (b'{"config_url": 5}', {"Content-Type": "application/json"}, 422, 'the body must be {"config_url": "<url>"}'),
])
def test_bad_bodies_get_json_errors(server, body, headers, status, error):
    assert call(server, "/network/add", body, headers)[::2] == (status, {"error": error})
    assert len(server.control.config.networks) == 1


def test_unknown_paths_and_methods_get_json_errors(server):
    assert call(server, "/nope")[::2] == (404, {"error": "not found"})
    assert call(server, "/network/join", b"{}", {"Content-Type": "application/json"})[::2] == (404, {"error": "not found"})
    assert call(server, "/network/add")[::2] == (405, {"error": "method not allowed"})


def test_token_file_is_created_once_with_mode_0600(tmp_path):
    token = TokenFile(tmp_path / "auth.token", fallback=str(tmp_path / "none"))
    token.ensure()
    text = (tmp_path / "auth.token").read_text()
    assert len(text) == 48 and int(text, 16) >= 0
    assert stat.S_IMODE((tmp_path / "auth.token").stat().st_mode) == 0o600
    token.ensure()
    assert (tmp_path / "auth.token").read_text() == text


def test_token_file_not_created_when_the_fallback_works_or_the_file_is_empty(tmp_path):
    fallback = tmp_path / "fallback.token"
    fallback.write_text("abc\n")
    TokenFile(tmp_path / "auth.token", fallback=str(fallback)).ensure()
    assert not (tmp_path / "auth.token").exists()
    (tmp_path / "empty.token").write_text("")
    with pytest.raises(AgentError, match=r"cannot read the API token: '.*/empty.token': empty; '.*/none': No such"):
        TokenFile(tmp_path / "empty.token", fallback=str(tmp_path / "none")).ensure()
    assert (tmp_path / "empty.token").read_text() == ""
    with pytest.raises(AgentError, match="cannot create '.*/missing/auth.token': No such file"):
        TokenFile(tmp_path / "missing" / "auth.token", fallback=str(tmp_path / "none")).ensure()


def test_listen_address_in_use_is_a_clear_error(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = ApiServer(ConfigControl(make_config(tmp_path)), token_file(tmp_path), "127.0.0.1", port)
        with pytest.raises(AgentError, match=rf"REST API cannot listen on 127.0.0.1:{port}: .*in use"):
            asyncio.run(server.start())


@pytest.mark.parametrize("text, address", [
    ("127.0.0.1:22527", ("127.0.0.1", 22527)),
    ("[::1]:8080", ("::1", 8080)),
    ("localhost:0", ("localhost", 0)),
    ("", None),
    ("  ", None),
])
def test_listen_addresses(text, address):
    assert parse_listen(text) == address


@pytest.mark.parametrize("text", ["127.0.0.1", "::1:80", "127.0.0.1:http", "127.0.0.1:70000", ":80"])
def test_bad_listen_addresses(text):
    with pytest.raises(ConfigError, match=f"API address '{text}' is invalid"):
        parse_listen(text)


class BrokenControl(ConfigControl):
    def status(self) -> dict:
        raise RuntimeError("bug in the agent")


def test_a_bug_behind_the_api_is_a_500_and_the_api_keeps_serving(tmp_path):
    control = BrokenControl(make_config(tmp_path))
    with ServerThread(control, token_file(tmp_path, TOKEN)) as server:
        assert call(server, "/status")[::2] == (500, {"error": "internal error"})
        assert call(server, "/status")[::2] == (500, {"error": "internal error"})
        assert post(server, "add", "https://b.example/")["success"] is True
        assert server.api.errors == {"internal_error": 2}
