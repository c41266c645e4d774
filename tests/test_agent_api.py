"""The agent's REST API on a real aiohttp server (Unix socket and 127.0.0.1), with a config-backed control."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import os
import re
import selectors
import socket
import stat
import time
import tomllib
from pathlib import Path

import pytest

from agent_api_server import LOW_DIFFICULTY, SECRET_URL, ConfigControl, ServerThread, make_config, squatter_argv, token_file
from drasyl.agent.api import (
    CONNECTION_LIFETIME_S,
    HEADER_TIMEOUT_S,
    MAX_CONNECTIONS,
    AgentError,
    ApiServer,
    TokenFile,
    config_status,
)
from drasyl.agent.config import AgentConfig
from drasyl.errors import ConfigError, DrasylError
from drasyl.urls import parse_listen
from netns import Process

TOKEN = "t0ken-for-tests"
NOBODY = 65534


def connect(server: ServerThread, unix: bool = False) -> socket.socket:
    if unix:
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(10)
        sock.connect(str(server.run_dir / "api.sock"))
        return sock
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def call(server: ServerThread, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         token: str | None = TOKEN, method: str | None = None, unix: bool = False) -> tuple[int, str, dict]:
    """(status, Content-Type, JSON body) of one request over TCP or the Unix socket."""
    headers = dict(headers or {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    connection = http.client.HTTPConnection("localhost")
    connection.sock = connect(server, unix)
    with connection.sock:
        connection.request(method or ("GET" if body is None else "POST"), path, body, headers)
        response = connection.getresponse()
        return response.status, response.headers["Content-Type"], json.loads(response.read())


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
    assert body == {**config_status(config), "api": {
        "socket": str(server.run_dir / "api.sock"), "tcp": f"127.0.0.1:{server.port}",
        "socket_error": None, "tcp_error": None}}
    assert call(server, "/status", unix=True) == (status, content_type, body)
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
    (b'{"config_url": "https://b.example/", "force": "yes"}', {"Content-Type": "application/json"}, 422,
     '"force" must be true or false, and only add takes it'),
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



# --- the Unix socket and its directory ---------------------------------------------------------


def test_socket_0666_in_a_new_0755_directory_whatever_the_umask_stale_socket_replaced_own_removed(tmp_path):
    control, token = ConfigControl(make_config(tmp_path)), token_file(tmp_path, TOKEN)
    old_umask = os.umask(0o077)  # the systemd unit's
    try:
        with ServerThread(control, token, listen=None) as server:
            assert server.port is None
            assert stat.S_IMODE(os.stat(server.run_dir).st_mode) == 0o755
            assert stat.S_IMODE(os.stat(server.run_dir / "api.sock").st_mode) == 0o666
            assert call(server, "/status", unix=True)[2]["api"]["tcp"] is None
    finally:
        os.umask(old_umask)
    assert not (server.run_dir / "api.sock").exists()
    with socket.socket(socket.AF_UNIX) as stale:  # a killed agent's socket: nobody answers on it
        stale.bind(str(server.run_dir / "api.sock"))
    with ServerThread(control, token, listen=None) as server:
        assert call(server, "/status", unix=True)[0] == 200


def test_a_second_agent_keeps_off_the_socket_of_a_running_one(server, tmp_path):
    second = ApiServer(server.control, server.token, None, server.run_dir)
    with pytest.raises(AgentError, match=f"^REST API cannot listen on {server.run_dir}/api.sock: "
                                         "another agent is serving on it$"):
        asyncio.run(second.start())
    assert call(server, "/status", unix=True)[0] == 200


@pytest.mark.parametrize("spoil, problem", [
    (lambda d: d.chmod(0o777), "{d} is writable by group or others (mode 0777)"),
    (lambda d: os.chown(d, NOBODY, -1), f"{{d}} is owned by uid {NOBODY}, not by root"),
])
def test_a_run_directory_others_could_write_to_is_refused(tmp_path, caplog, spoil, problem):
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o755)
    spoil(run_dir)
    expected = "REST API: refusing the run directory: " + problem.format(d=run_dir)
    control, token = ConfigControl(make_config(tmp_path)), token_file(tmp_path, TOKEN)
    with pytest.raises(AgentError, match=f"^{re.escape(expected)}$"):
        asyncio.run(ApiServer(control, token, None, run_dir).start())
    assert not (run_dir / "api.sock").exists()
    with ServerThread(control, token) as server:  # TCP still serves, the status says why the socket does not
        assert call(server, "/status")[2]["api"] == {
            "socket": None, "tcp": f"127.0.0.1:{server.port}", "socket_error": expected, "tcp_error": None}
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [expected]


@pytest.fixture
def squatter():
    """A process of user nobody holding a free port of 127.0.0.1, and that port."""
    proc = Process(squatter_argv(), "squatter")
    try:
        yield proc, int(proc.wait_for_line(r"^listening (\d+)$", 10).match[1])
    finally:
        proc.stop()


def test_a_squatted_tcp_port_is_an_error_naming_the_holder_and_the_socket_serves(tmp_path, caplog, squatter):
    proc, port = squatter
    control, token = ConfigControl(make_config(tmp_path)), token_file(tmp_path, TOKEN)
    expected = f"REST API cannot listen on 127.0.0.1:{port}: Address already in use (held by uid {NOBODY})"
    with ServerThread(control, token, listen=("127.0.0.1", port)) as server:
        assert server.api.tcp_error == expected and server.port is None
        assert call(server, "/status", unix=True)[2]["api"] == {
            "socket": str(server.run_dir / "api.sock"), "tcp": None, "socket_error": None, "tcp_error": expected}
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [expected]
    server.run_dir.chmod(0o777)  # neither listener: then the agent cannot start
    with pytest.raises(AgentError, match=r"^REST API: refusing the run directory: .* \(mode 0777\); "
                                         f"{re.escape(expected)}$"):
        asyncio.run(ApiServer(control, token, ("127.0.0.1", port), server.run_dir).start())
    assert proc.lines_since(0) == [f"listening {port}"]  # nobody connected to the squatter


# --- bounded connections -------------------------------------------------------------------------


def closed_by_the_server(socks: list[socket.socket], deadline: float) -> list[socket.socket]:
    """The sockets the server closed (EOF or reset) until ``deadline`` (monotonic) or all are."""
    closed = []
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            selector.register(sock, selectors.EVENT_READ)
        while len(closed) < len(socks) and (left := deadline - time.monotonic()) > 0:
            for key, _ in selector.select(left):
                try:
                    assert key.fileobj.recv(1) == b"", "the server sent something"
                except ConnectionResetError:
                    pass
                selector.unregister(key.fileobj)
                closed.append(key.fileobj)
    return closed


def test_idle_slow_and_excess_connections_are_closed_and_requests_still_work(server, caplog):
    socks = []
    try:
        for i in range(200):
            socks.append(connect(server))
            if i < 10:  # slowloris: headers that never end
                socks[-1].sendall(b"GET /status HTTP/1.1\r\nHost: x\r\n")
        opened = time.monotonic()
        excess = closed_by_the_server(socks, opened + 2)
        assert len(excess) == 200 - MAX_CONNECTIONS and server.api.connections["tcp"] == MAX_CONNECTIONS
        held = [sock for sock in socks if sock not in excess]
        assert set(socks[:10]) <= set(held)  # the slow ones came first: admitted, then timed out
        assert call(server, "/status", unix=True)[0] == 200  # TCP's limit is not the socket's
        with pytest.raises((ConnectionError, http.client.RemoteDisconnected)):
            call(server, "/status")
        assert server.api.dropped["too_many_connections"] == 200 - MAX_CONNECTIONS + 1
        assert len(closed_by_the_server(held, opened + HEADER_TIMEOUT_S + 1.5)) == MAX_CONNECTIONS
        assert call(server, "/status")[0] == 200
    finally:
        for sock in socks:
            sock.close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_connection_lives_at_most_its_lifetime(tmp_path, monkeypatch):
    monkeypatch.setattr("drasyl.agent.api.CONNECTION_LIFETIME_S", 1.0)  # below the keep-alive timeout
    with ServerThread(ConfigControl(make_config(tmp_path)), token_file(tmp_path, TOKEN)) as server:
        with connect(server) as sock:
            connection = http.client.HTTPConnection("localhost")
            connection.sock = sock
            connection.request("GET", "/status", headers={"Authorization": f"Bearer {TOKEN}"})
            assert connection.getresponse().read()
            started = time.monotonic()
            assert closed_by_the_server([sock], started + 3) == [sock]
            assert time.monotonic() - started < 2 and server.api.dropped == {"lifetime": 1}
    assert CONNECTION_LIFETIME_S == 60.0


def test_force_reaches_add_only(server):
    body = b'{"config_url": "file:///f.toml", "force": true}'
    headers = {"Content-Type": "application/json"}
    assert call(server, "/network/add", body, headers)[2] == {"success": True,
                                                              "message": "Network 'file:///f.toml' added (forced)"}
    assert call(server, "/network/remove", body, headers)[:3:2] == (
        422, {"error": '"force" must be true or false, and only add takes it'})


def test_the_agent_checks_a_network_before_adding_it(tmp_path):
    """daemon.Agent.add fetches and validates; only then is the entry saved."""
    from drasyl.agent.daemon import Agent

    config = make_config(tmp_path)
    me = config.identity.public_key_hex
    (tmp_path / "member.toml").write_text(f'network = "10.1.0.0/24"\n[[node]]\npk = "{me}"\nip = "10.1.0.3"\nhostname = "me"\n')
    (tmp_path / "other.toml").write_text(f'network = "10.1.0.0/24"\n[[node]]\npk = "{"ab" * 32}"\nip = "10.1.0.4"\nhostname = "other"\n')
    (tmp_path / "broken.toml").write_text('network = "10.1.0.0/33"\n')

    async def scenario() -> list[object]:
        agent = Agent(config, str(tmp_path / "auth.token"), None, str(tmp_path / "run"))
        results: list[object] = []
        try:
            for url, force in ((f"file://{tmp_path}/member.toml", False), (f"file://{tmp_path}/other.toml", False),
                               (f"file://{tmp_path}/broken.toml", False), (f"file://{tmp_path}/missing.toml", False),
                               (f"file://{tmp_path}/missing.toml", True), (f"file://{tmp_path}/member.toml", False)):
                try:
                    results.append(await agent.add(url, force))
                except DrasylError as exc:
                    results.append(type(exc).__name__ + ": " + str(exc))
        finally:
            agent._work_thread.shutdown()
            agent._host_thread.shutdown()
        return results

    results = asyncio.run(scenario())
    assert results[0] == "; this node is a member as 10.1.0.3"
    assert results[1] == f", but this node ({me[:12]}…) is not listed in it"
    assert results[2].startswith("NetworkConfigError: ") and "10.1.0.0/33" in results[2]
    assert results[3].startswith("FetchError: ") and "missing.toml" in results[3]
    assert results[4].startswith(", but its config cannot be used yet (saved because of force): ")
    assert results[5] == f"ConfigError: Network already exists: file://{tmp_path}/member.toml"
    saved = [n.config_url for n in AgentConfig.load(tmp_path / "config.toml", difficulty=LOW_DIFFICULTY).networks]
    assert saved == [SECRET_URL] + [f"file://{tmp_path}/{name}.toml" for name in ("member", "other", "missing")]
