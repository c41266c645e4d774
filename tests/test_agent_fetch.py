"""Fetching network configs (agent.md §3) from real aiohttp servers on loopback and from files."""

from __future__ import annotations

import asyncio
import base64
import shutil
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from drasyl.agent.fetch import FetchError, fetch_config_text, redact_url

OWN_PK = "ab" * 32
CONFIG = 'network = "10.1.0.0/24"\nname = "Acme"\n'

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Server:
    """An aiohttp server on a loopback address; records every request it gets."""

    def __init__(self, host: str = "127.0.0.1", ssl_context: ssl.SSLContext | None = None) -> None:
        self.host = host
        self.ssl_context = ssl_context
        self.routes: dict[str, Handler] = {}
        self.requests: list[web.Request] = []
        self.port = 0

    def url(self, path: str, userinfo: str = "") -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://{userinfo + '@' if userinfo else ''}{self.host}:{self.port}{path}"

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request)
        handler = self.routes.get(request.path)
        if handler is None:
            return web.Response(status=404)
        return await handler(request)

    async def __aenter__(self) -> Server:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, shutdown_timeout=1, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0, ssl_context=self.ssl_context)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()


def body(data: bytes | str = CONFIG) -> Handler:
    async def handler(_request: web.Request) -> web.Response:
        return web.Response(body=data.encode() if isinstance(data, str) else data)
    return handler


def redirect(location: str, status: int = 302) -> Handler:
    async def handler(_request: web.Request) -> web.Response:
        return web.Response(status=status, headers={"Location": location})
    return handler


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def protected(*authorizations: str) -> Handler:
    """The config for requests with one of these Authorization headers, else 401."""
    async def handler(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") not in authorizations:
            return web.Response(status=401)
        return web.Response(text=CONFIG)
    return handler


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 20))


async def fetch(url: str, **kwargs: float) -> str:
    async with aiohttp.ClientSession() as session:
        return await fetch_config_text(url, OWN_PK, session, **kwargs)


async def fetch_error(url: str, **kwargs: float) -> str:
    with pytest.raises(FetchError) as info:
        await fetch(url, **kwargs)
    return str(info.value)


# --- http ----------------------------------------------------------------------------------

def test_get_sends_own_public_key_and_no_credentials():
    async def scenario():
        async with Server() as server:
            server.routes["/net.toml"] = body()
            assert await fetch(server.url("/net.toml")) == CONFIG
            (request,) = server.requests
            assert request.headers["drasyl-pk"] == OWN_PK
            assert request.headers["Connection"].lower() == "close"
            assert "Authorization" not in request.headers
    run(scenario)


def test_basic_auth_from_url_is_percent_decoded():
    async def scenario():
        async with Server() as server:
            server.routes["/net.toml"] = protected(basic("alice", "p@ss word"), basic("jörg", "päss"))
            assert await fetch(server.url("/net.toml", "alice:p%40ss%20word")) == CONFIG
            assert await fetch(server.url("/net.toml", "j%C3%B6rg:p%C3%A4ss")) == CONFIG  # UTF-8, as drasyl-rs
            assert server.requests[-1].headers["Authorization"] == basic("jörg", "päss")
            message = await fetch_error(server.url("/net.toml", "alice:wrong"))
            assert message == f"HTTP request failed with status 401 Unauthorized: {server.url('/net.toml', 'alice:***')}"
    run(scenario)


def test_user_without_password_sends_no_authorization():
    async def scenario():
        async with Server() as server:
            server.routes["/net.toml"] = body()
            await fetch(server.url("/net.toml", "alice"))
            await fetch(server.url("/net.toml", "alice:"))
            assert [r.headers.get("Authorization") for r in server.requests] == [None, None]
    run(scenario)


def test_relative_redirect_is_resolved_and_keeps_the_credentials_of_its_url():
    async def scenario():
        async with Server() as server:
            server.routes["/a/old.toml"] = redirect("new.toml")
            server.routes["/a/new.toml"] = redirect("/b/final.toml", status=301)
            server.routes["/b/final.toml"] = body()
            assert await fetch(server.url("/a/old.toml", "alice:pw")) == CONFIG
            assert [r.path for r in server.requests] == ["/a/old.toml", "/a/new.toml", "/b/final.toml"]
            assert {r.headers.get("Authorization") for r in server.requests} == {basic("alice", "pw")}
            assert {r.headers["drasyl-pk"] for r in server.requests} == {OWN_PK}
    run(scenario)


def test_cross_host_redirect_uses_the_credentials_of_the_new_url_only():
    async def scenario():
        async with Server() as a, Server("127.0.0.2") as b:
            b.routes["/net.toml"] = body()
            a.routes["/with-creds"] = redirect(b.url("/net.toml", "bob:s%3Acret"))
            a.routes["/without-creds"] = redirect(b.url("/net.toml"))
            assert await fetch(a.url("/with-creds", "alice:pw")) == CONFIG
            assert await fetch(a.url("/without-creds", "alice:pw")) == CONFIG
            assert [r.headers.get("Authorization") for r in a.requests] == [basic("alice", "pw")] * 2
            assert [r.headers.get("Authorization") for r in b.requests] == [basic("bob", "s:cret"), None]
            assert [r.host for r in b.requests] == [f"127.0.0.2:{b.port}"] * 2
    run(scenario)


def test_five_redirects_are_followed_and_a_sixth_is_refused():
    async def scenario():
        async with Server() as server:
            for i in range(1, 7):
                server.routes[f"/r{i}"] = redirect(f"/r{i - 1}")
            server.routes["/r0"] = body()
            assert await fetch(server.url("/r5")) == CONFIG
            server.requests.clear()
            message = await fetch_error(server.url("/r6", "alice:secret"))
            assert message == f"Too many redirects (max 5): {server.url('/r6', 'alice:***')}"
            assert len(server.requests) == 6 and "/r0" not in [r.path for r in server.requests]
    run(scenario)


def test_redirect_to_a_file_url_is_refused():
    async def scenario():
        async with Server() as server:
            server.routes["/net.toml"] = redirect("file:///etc/passwd")
            message = await fetch_error(server.url("/net.toml"))
            assert message == (f"{server.url('/net.toml')} redirects to file:///etc/passwd: only http and https "
                               f"are followed")
    run(scenario)


@pytest.mark.parametrize("status, reason", [(404, "Not Found"), (500, "Internal Server Error"),
                                            (302, "Found"), (204, None)])
def test_non_2xx_is_an_error(status, reason):
    async def scenario():
        async with Server() as server:
            async def reply(_request: web.Request) -> web.Response:
                return web.Response(status=status)  # a 302 without Location cannot be followed
            server.routes["/net.toml"] = reply
            if reason is None:  # 2xx without a body is an empty config text
                assert await fetch(server.url("/net.toml")) == ""
                return
            message = await fetch_error(server.url("/net.toml", "alice:secret"))
            assert message == f"HTTP request failed with status {status} {reason}: {server.url('/net.toml', 'alice:***')}"
    run(scenario)


def test_timeout_covers_the_whole_fetch():
    async def scenario():
        async with Server() as server:
            release = asyncio.Event()

            async def stall(_request: web.Request) -> web.Response:
                await release.wait()
                return web.Response(text=CONFIG)
            server.routes["/slow.toml"] = stall
            server.routes["/hop"] = redirect("/slow.toml")
            loop = asyncio.get_running_loop()
            start = loop.time()
            message = await fetch_error(server.url("/hop", "alice:secret"), timeout_s=0.3)
            elapsed = loop.time() - start
            release.set()
            assert message == f"timed out after 0.3 s fetching {server.url('/hop', 'alice:***')}"
            assert 0.25 < elapsed < 3, elapsed
    run(scenario)


def test_body_must_be_utf8():
    async def scenario():
        async with Server() as server:
            server.routes["/latin1.toml"] = body(b'name = "caf\xe9"\n')
            server.routes["/bom.toml"] = body(b"\xef\xbb\xbf" + CONFIG.encode())
            message = await fetch_error(server.url("/latin1.toml"))
            assert message == f"{server.url('/latin1.toml')} is not UTF-8 text (invalid byte at offset 11)"
            assert await fetch(server.url("/bom.toml")) == CONFIG
    run(scenario)


def test_unreachable_server_is_an_error_without_password():
    async def scenario():
        async with Server() as server:
            url = server.url("/net.toml", "alice:secret")
        message = await fetch_error(url)  # the server is gone: connection refused
        assert message.startswith(f"cannot fetch {server.url('/net.toml', 'alice:***')}: ")
        assert "secret" not in message
    run(scenario)


def test_unsupported_scheme():
    async def scenario():
        message = await fetch_error("ftp://alice:secret@config.example/net.toml")
        assert message == ("Unsupported URL scheme: ftp://alice:***@config.example/net.toml "
                           "(use file://, http:// or https://)")
    run(scenario)


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def test_https_verifies_the_certificate(self_signed):
    cert, key = self_signed
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def scenario():
        async with Server(ssl_context=server_ctx) as server:
            server.routes["/net.toml"] = protected(basic("alice", "pw"))
            message = await fetch_error(server.url("/net.toml", "alice:pw"))
            assert "certificate verify failed" in message and ":pw@" not in message
            assert server.requests == []
            trusting = ssl.create_default_context(cafile=str(cert))
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trusting)) as session:
                assert await fetch_config_text(server.url("/net.toml", "alice:pw"), OWN_PK, session) == CONFIG
    run(scenario)


# --- file ----------------------------------------------------------------------------------

def test_file_url_with_absolute_path(tmp_path):
    path = tmp_path / "net.toml"
    path.write_text(CONFIG)
    assert asyncio.run(fetch(f"file://{path}")) == CONFIG


def test_file_url_relative_to_working_directory_and_not_percent_decoded(tmp_path, monkeypatch):
    (tmp_path / "rel").mkdir()
    (tmp_path / "rel" / "x.toml").write_text(CONFIG)
    (tmp_path / "my%20net.toml").write_text("name = 'literal'\n")
    monkeypatch.chdir(tmp_path)
    assert asyncio.run(fetch("file://rel/x.toml")) == CONFIG
    assert asyncio.run(fetch("file://my%20net.toml")) == "name = 'literal'\n"


def test_missing_file(tmp_path):
    path = tmp_path / "missing.toml"
    message = asyncio.run(fetch_error(f"file://{path}"))
    assert message == f"cannot read network config file '{path}' (from file://{path}): No such file or directory"


def test_file_must_be_utf8(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"# caf\xe9\n")
    assert asyncio.run(fetch_error(f"file://{path}")) == f"file://{path} is not UTF-8 text (invalid byte at offset 5)"


# --- redaction -----------------------------------------------------------------------------

@pytest.mark.parametrize("url, shown", [
    ("https://alice:secret@h.example/n.toml", "https://alice:***@h.example/n.toml"),
    ("https://alice:p@ss@h.example/n?x=a@b", "https://alice:***@h.example/n?x=a@b"),
    ("https://alice@h.example/n.toml", "https://alice@h.example/n.toml"),
    ("https://h.example/a@b", "https://h.example/a@b"),
    ("file:///etc/drasyl/n.toml", "file:///etc/drasyl/n.toml"),
    ("not a url", "not a url"),
])
def test_redact_url(url, shown):
    assert redact_url(url) == shown
