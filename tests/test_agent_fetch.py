"""Fetching network configs (agent.md §3) from real aiohttp servers on loopback, from files,
FIFOs and /dev/zero, and (netns) redirects from a public-looking address into loopback."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import os
import re
import resource
import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from drasyl.agent.config import is_insecure
from drasyl.agent.fetch import MAX_BODY_BYTES, FetchError, _is_public, fetch_config_text
from netns import Lab, lab, python_env  # noqa: F401 (lab is a fixture)

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


def test_directory_is_not_a_regular_file(tmp_path):
    message = asyncio.run(fetch_error(f"file://{tmp_path}"))
    assert message == f"network config file '{tmp_path}' (from file://{tmp_path}) is not a regular file"


def test_file_is_capped_like_a_response_body(tmp_path):
    assert MAX_BODY_BYTES == 4 << 20
    path = tmp_path / "big.toml"
    path.write_bytes(b"#" * MAX_BODY_BYTES)
    assert len(asyncio.run(fetch(f"file://{path}"))) == MAX_BODY_BYTES
    path.write_bytes(b"#" * (MAX_BODY_BYTES + 1))
    message = asyncio.run(fetch_error(f"file://{path}"))
    assert message == f"network config file '{path}' (from file://{path}) is larger than 4 MiB"


# Runs one fetch the way the daemon does (its OnDemandSession) in a fresh interpreter: a test
# of a FIFO or /dev/zero must not hang or exhaust pytest's own process when it fails.
PROBE = """
import asyncio, sys
from drasyl.agent.fetch import FetchError, OnDemandSession, fetch_config_text

async def main():
    session = OnDemandSession()
    try:
        print("OK", repr(await fetch_config_text(sys.argv[1], "ab" * 32, session)))
    except FetchError as exc:
        print("ERROR", exc)
    finally:
        await session.close()

asyncio.run(main())
"""


def probe(url: str, netns: str | None = None) -> str:
    """The probe's one line for ``url``: ``OK <text>`` or ``ERROR <message>``; fails if the
    probe does not exit within 30 s (with 1 GiB of address space)."""
    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    argv = [sys.executable, "-c", PROBE, url]
    try:
        result = subprocess.run(["ip", "netns", "exec", netns, *argv] if netns else argv, env=python_env(),
                                capture_output=True, text=True, timeout=30, preexec_fn=limit_memory)
    except subprocess.TimeoutExpired:
        pytest.fail(f"fetching {url} did not end within 30 s", pytrace=False)
    assert result.returncode == 0 and result.stdout.count("\n") == 1, (result.stdout, result.stderr)
    return result.stdout.strip()


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "net.toml"
    os.mkfifo(fifo)
    assert probe(f"file://{fifo}") == f"ERROR network config file '{fifo}' (from file://{fifo}) is not a regular file"


def test_dev_zero_is_refused_without_reading():
    assert probe("file:///dev/zero") == ("ERROR network config file '/dev/zero' (from file:///dev/zero) "
                                         "is not a regular file")


def test_response_body_is_capped():
    async def scenario():
        async with Server() as server:
            server.routes["/fits.toml"] = body(b"#" * MAX_BODY_BYTES)
            server.routes["/big.toml"] = body(b"#" * (MAX_BODY_BYTES + 1))
            assert len(await fetch(server.url("/fits.toml"))) == MAX_BODY_BYTES
            message = await fetch_error(server.url("/big.toml", "alice:secret"))
            assert message == f"{server.url('/big.toml', 'alice:***')}: response larger than 4 MiB"
    run(scenario)


def test_timeout_covers_a_stalled_body():
    async def scenario():
        async with Server() as server:
            release = asyncio.Event()

            async def stall(request: web.Request) -> web.StreamResponse:
                response = web.StreamResponse()
                await response.prepare(request)
                await response.write(b"# part of it\n")
                await release.wait()
                return response
            server.routes["/slow.toml"] = stall
            server.routes["/hop"] = redirect("/slow.toml")
            message = await fetch_error(server.url("/hop"), timeout_s=0.3)
            release.set()
            assert message == f"timed out after 0.3 s fetching {server.url('/hop')}"
    run(scenario)


def test_is_insecure():
    assert is_insecure("http://config.example/net.toml")
    assert is_insecure("HTTP://config.example/net.toml")
    assert not is_insecure("https://config.example/net.toml")
    assert not is_insecure("file:///etc/drasyl/net.toml")


@pytest.mark.parametrize("address, public", [
    ("8.8.8.8", True), ("198.51.100.7", True), ("203.0.113.7", True), ("2a00:1450::1", True),
    ("2001:db8::1", True),  # documentation ranges count as public
    ("127.0.0.1", False), ("127.8.9.10", False), ("::1", False), ("::ffff:127.0.0.1", False),
    ("169.254.169.254", False), ("fe80::1", False), ("fe80::1%1", False),
    ("10.1.2.3", False), ("172.16.0.1", False), ("172.31.255.254", False), ("192.168.1.1", False),
    ("100.64.0.1", False), ("100.127.255.254", False), ("fd12:3456::1", False), ("fc00::1", False),
    ("fec0::1", False), ("0.0.0.0", False), ("0.1.2.3", False), ("::", False),
    ("224.0.0.1", False), ("239.1.2.3", False), ("ff02::1", False), ("240.0.0.1", False),
    ("255.255.255.255", False), ("::ffff:10.0.0.1", False), ("::ffff:8.8.8.8", True),
])
def test_public_addresses(address, public):
    assert _is_public(ipaddress.ip_address(address)) is public


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Passwords with characters that end a URL's authority, or are @ or :, so a parser reads parts
# of them as host, port or path; "{port}" becomes a closed port (read as the port by yarl).
@pytest.mark.parametrize("userinfo", ["u:SECRETA#SECRETB", "u:SECRETA/SECRETB", "u:SECRETA?SECRETB",
                                      "u:SECRETA@SECRETB", "u:SECRETA:SECRETB", "u:SECRETA@SECRETB/SECRETC",
                                      "u:SECRETA@SECRETB#SECRETC", "127.0.0.1:{port}/SECRETB"])
def test_no_error_message_shows_a_password(userinfo):
    port = str(free_port())
    userinfo = userinfo.format(port=port)
    pieces = [piece for piece in re.split(r"[#/?@:]", userinfo.partition(":")[2]) if piece]

    async def scenario():
        async with Server() as server:
            server.routes["/x"] = protected()  # 401 to whatever arrives
            server.routes["/latin1"] = body(b"\xe9")
            server.routes["/loop"] = redirect("/loop")
            urls = [server.url(path, userinfo) for path in ("/x", "/latin1", "/loop")]
            messages = [await fetch_error(url) for url in urls]
        messages += [await fetch_error(url) for url in urls]  # server gone: connection refused
        for message in messages:
            assert not [piece for piece in pieces if piece in message], message
    run(scenario)


# --- redirects into local address space (netns) ----------------------------------------------

PUBLIC, PRIVATE, LOCAL_PORT = "203.0.113.7", "10.9.8.7", 8081
HOSTS = f"""127.0.0.1 localhost
127.0.0.1 loop.test
{PUBLIC} cfg.test
{PRIVATE} intranet.test
{PUBLIC} mixed.test
127.0.0.1 mixed.test
"""
# One handler on PUBLIC:80 and on 127.0.0.1 and PRIVATE at LOCAL_PORT: it prints the
# address each request arrived at, then redirects to ?to= or serves a config naming the path.
SERVERS = """
import asyncio, sys
from aiohttp import web

async def handle(request):
    print("HIT", request.transport.get_extra_info("sockname")[0], request.path, flush=True)
    if "to" in request.query:
        return web.Response(status=302, headers={"Location": request.query["to"]})
    return web.Response(text=f"name = {request.path!r}\\n")

async def main():
    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    for host, port in [(sys.argv[1], 80), ("127.0.0.1", int(sys.argv[3])), (sys.argv[2], int(sys.argv[3]))]:
        await web.TCPSite(runner, host, port).start()
    print("READY", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def redirect_lab(lab: Lab):
    """A namespace with PUBLIC and PRIVATE on its ``lo``, /etc/hosts names for them and for
    loopback (files only, every address of a name), and SERVERS running; the namespace and the
    servers' process."""
    ns = lab.namespace("fetch")
    for address in (PUBLIC, PRIVATE):
        lab.ip(ns, "addr", "add", f"{address}/32", "dev", "lo")
    lab.etc_file(ns, "hosts", HOSTS)
    lab.etc_file(ns, "host.conf", "multi on\n")
    lab.etc_file(ns, "nsswitch.conf", "hosts: files\n")
    servers = lab.start(ns, [sys.executable, "-c", SERVERS, PUBLIC, PRIVATE, str(LOCAL_PORT)], "servers",
                        env=python_env())
    servers.wait_for_line("^READY$", 20)
    return ns, servers


@pytest.mark.netns
@pytest.mark.parametrize("target", [f"http://127.0.0.1:{LOCAL_PORT}/local.toml",
                                    f"http://loop.test:{LOCAL_PORT}/local.toml",
                                    f"http://localhost:{LOCAL_PORT}/local.toml",
                                    f"http://mixed.test:{LOCAL_PORT}/local.toml",  # any local address counts
                                    f"http://intranet.test:{LOCAL_PORT}/local.toml",
                                    f"http://{PRIVATE}:{LOCAL_PORT}/local.toml",
                                    f"http://127.1:{LOCAL_PORT}/local.toml"])
def test_redirect_from_a_public_address_into_local_space_is_refused(lab, target):
    ns, servers = redirect_lab(lab)
    origin = f"http://{PUBLIC}/net.toml?to={target}"
    result = probe(origin, ns)
    assert result.startswith(f"ERROR {origin} redirects to {target}, which is "), result
    assert result.endswith(", not a public address: refused (only a config URL that is itself local "
                           "may redirect there)"), result
    assert probe(f"http://{PUBLIC}/sentinel", ns) == "OK \"name = '/sentinel'\\n\""
    hits = servers.lines_since(0)
    assert hits[hits.index(f"HIT {PUBLIC} /sentinel") - 1] == f"HIT {PUBLIC} /net.toml", servers.describe()
    assert all(line.startswith(f"HIT {PUBLIC} ") for line in hits[1:]), servers.describe()


@pytest.mark.netns
def test_redirects_that_stay_public_or_start_local_are_followed(lab):
    ns, servers = redirect_lab(lab)
    assert probe(f"http://{PUBLIC}/net.toml?to=http://cfg.test/public.toml", ns) == \
        "OK \"name = '/public.toml'\\n\""
    for origin in (f"127.0.0.1:{LOCAL_PORT}", f"loop.test:{LOCAL_PORT}", f"{PRIVATE}:{LOCAL_PORT}"):
        target = f"http://intranet.test:{LOCAL_PORT}/local.toml?to=http://127.0.0.1:{LOCAL_PORT}/final.toml"
        assert probe(f"http://{origin}/net.toml?to={target}", ns) == "OK \"name = '/final.toml'\\n\"", origin
