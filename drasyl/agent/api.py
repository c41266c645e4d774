"""The agent's local REST API (agent.md §6) on aiohttp, and the bearer-token file.

Endpoints, all behind ``Authorization: Bearer <token>``: ``GET /status`` and
``POST /network/{add,remove,enable,disable}`` with ``{"config_url": "<url>"}``, answering
``{"success": bool, "message": str}`` with drasyl-rs' messages (``Network '<url>' removed
successfully``; ``Failed to add network '<url>': <reason>``). ``config_url`` may also be the
masked URL that ``status`` shows or the network's name (:meth:`AgentConfig.find_network`),
except for ``add``. ``add`` takes ``"force": true`` (optional; save the entry even when the
config cannot be fetched now) and says what it found instead of "successfully":
``Network '<url>' added; this node is a member as 10.1.0.3``. The token file is re-read on
every request (main path, then ``~/.drasyl/auth.token``) and created at start with 24 random
bytes as hex, mode 0600, when neither can be read. Errors are JSON ``{"error": "…"}``: 401
``bearer token missing`` / ``token wrong``, 500 ``token file not found``, and, where axum
answers in plain text, 415 (Content-Type not application/json), 400 (not JSON), 422 (no
string ``config_url``), 404, 405, and 500 ``internal error`` (an unexpected exception in
the agent: counted, logged at most every 10 s, the API keeps serving).

``POST /ping`` with ``{"peer": "<hostname, overlay IP or public key (prefix)>", "timeout":
<seconds>}`` sends one ICMP echo request to the peer through the overlay and answers when
the reply came or the timeout passed: ``{"success": true, "reply": bool, "rtt_ms", "path",
"endpoint", "via", "peer": {…}, "seq"}``, or ``{"success": false, "message": "<why not>"}``
(unknown peer, no policy, …); schema in :mod:`drasyl.agent.ping`. 422 for a body without a
string ``peer`` and a numeric ``timeout``.

``GET /netcheck`` probes the super peers (UDP registration and STUN, TCP connect, the public
mapping and whether it depends on the destination, IPv6) for up to ~3 s and answers the
report; schema in :mod:`drasyl.agent.netcheck`.

Fixed against drasyl-rs: the token is compared in constant time; an empty token file is
refused (an empty token would accept ``Bearer`` with nothing after it); failure messages
drop the misleading ``Failed to fetch network configuration:`` prefix; URLs in answers show
``user:***@`` instead of the password; the status contains no secret key, no session keys
and no URL credentials. The HTTP side is here; what the agent does is behind
:class:`AgentControl`, so the API runs against any implementation of it.

``GET /status`` schema (lists are sorted for display by the producer)::

    {
      "version": "0.1.0",                       # agent package version
      "public_key": "<64 hex>",                 # this agent's identity (never the secret key)
      "mtu": 1345,                              # TUN MTU
      "super_peers": [{
          "url": "udp://host:22527?publicKey=…&networkId=1&tcpPort=8443",
          "public_key": "<64 hex>", "address": "host:22527",
          "transport": "udp" | "tcp" | null,    # null: not reachable (yet)
          "rtt_ms": 12.3 | null,
          "state": "registered" | "tcp fallback" | "no answer",
          "reason": "registered over UDP, RTT 12.3 ms" | "no answer for 35 s: a wrong publicKey …",
          "unanswered_s": 35.0 | null,          # since the oldest unanswered UDP HELLO
          "default": true                       # the super peer relaying now (lowest RTT)
      }],
      "networks": [{
          "config_url": "https://user:***@host/net.toml",   # as written, password masked
          "name": "Acme" | null, "disabled": false,
          "state": "active" | "disabled" | "pending" | "not a member" | "error" | "refused",
          "subnet": "10.1.0.0/24" | null, "ip": "10.1.0.1" | null,
          "subnet6": "fd12:3456:789a::/64" | null, "ip6": "fd12:3456:789a::1" | null,  # null: no IPv6 here
          "error": "<last fetch or validation error>" | null,
          "insecure": false,                    # fetched over plain http://
          "warnings": ["[[node]] #3: IP address … is the broadcast address …"],  # accepted, rarely works
          "refused": ["route 0.0.0.0/1 via 10.1.0.2 refused: …"]   # what the local user did not allow
      }],
      "peers": [{                               # every member of every applied network
          "public_key": "<64 hex>", "hostname": "fileserver" | null, "ip": "10.1.0.2" | null,
          "ip6": "fd12:3456:789a::2" | null,    # its overlay IPv6 address
          "ipv6": "yes" | "not yet" | "no",     # takes IPv6 (learned) / no announcement yet / no IPv6 rule
          "network": "Acme" | null,             # the (first) network naming it
          "path": "direct" | "relayed" | "tcp" | "unreachable",
          "via": "<super peer public key hex>" | null,   # relayed / tcp: the relaying super peer
          "cause": "policy" | "refused" | "no relay" | "no answer" | null,   # why unreachable
          "reason": "no [[policy]] of the network lets …" | null,   # the cause in words
          "endpoint": "203.0.113.10:22527" | null,        # direct: where its packets go
          "rtt_ms": 8.1 | null,                 # direct path RTT
          "last_rx_s": 1.5 | null,              # seconds since the last packet from it
          "rx_bytes": 0, "tx_bytes": 0,         # overlay bytes in / out
          "last_punch_s": 12.0 | null,          # since the last hole punch (UNITE) for it
          "punch_result": "direct" | "trying" | "no direct path (…)" | null
      }],
      "conflicts": ["<later network>: … joined earlier"],  # claims refused to a later network
      "routes": [{"dest": "192.168.50.0/24", "gateway": "10.1.0.10", "network": "Acme",
                  "state": "Applied" | "Pending" | "Removing"}],   # kernel routes via the TUN
      "drops": {"<reason>": 0},                 # packets dropped by the agent, by reason
      "ipv6": {"device": true,                  # the TUN carries IPv6 (host has IPv6, MTU >= 1280)
               "announcements_sent": 3, "announcements_received": 2},
      "names": {"mode": "hosts" | "hosts+resolver" | "hosts+resolver+resolved",
                "resolver": ["10.1.0.1:53", "[fd12:3456:789a::1]:53"],   # where the DNS resolver listens
                "resolver_errors": {"<address>:53": "<why not>"},
                "resolved": "registered" | "not running" | "<why not>",  # systemd-resolved
                "queries": {"queries": 0, "answered": 0, "nxdomain": 0, "refused": 0,
                            "malformed": 0, "rate_limited": 0}},
      "native": {"tx_packets": 0, "rx_packets": 0, "faults": 0} | null   # the C data path (agent/fast.py)
    }

:func:`config_status` produces the parts config.toml knows; the agent fills in the rest.
The agent's Prometheus metrics (:mod:`.metrics`) are made from this dict: a change of the
schema is a change of the metrics.
The schema is ours, not drasyl-rs' (whose ``Status`` carries the secret key and session keys),
so drasyl-rs' CLI cannot read it and ours cannot read drasyl-rs'. :class:`ApiServer` adds
``"api": {"socket": "/run/drasyl/api.sock" | null, "tcp": "127.0.0.1:22527" | null,
"socket_error": str | null, "tcp_error": str | null}``: where it listens, and why not.

Listeners: the same app on a Unix socket, ``<run dir>/api.sock`` (default ``/run/drasyl``),
as tailscaled does, and on TCP (``127.0.0.1:22527``, for drasyl-rs' CLI). Anybody on the
machine can bind a free TCP port, so a local user who takes 22527 first would be handed the
token by every client that trusts the port; nobody but the agent's user can create a path in
the run directory, which the agent creates mode 0755 and refuses when another uid owns it or
group or others may write to it. The socket is mode 0666: the token is still required on it.
A squatted TCP port is an error in the log and the status (naming the holder's uid from
``/proc/net/tcp``), not a failed start; only when neither listener works does
:meth:`ApiServer.start` fail. :func:`peer_uid` and :func:`untrusted` are the checks the CLI
makes before it sends the token.

Connections are bounded so that idle or slow clients cannot use up the agent's descriptors:
at most :data:`MAX_CONNECTIONS` per listener (more are closed at once), complete request
headers within :data:`HEADER_TIMEOUT_S`, idle keep-alive :data:`KEEPALIVE_S`, and at most
:data:`CONNECTION_LIFETIME_S` per connection; closures are counted in
:attr:`ApiServer.dropped`, never logged per connection.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import hmac
import inspect
import ipaddress
import json
import logging
import os
import secrets
import socket
import stat
import struct
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from ..errors import DrasylError
from ..net.faults import FaultLog
from ..urls import format_host_port
from .config import AgentConfig, is_insecure, mask_url

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:22527"
LISTEN_ENV = "DRASYL_API_LISTEN"
DEFAULT_TOKEN_FILE = "/etc/drasyl/auth.token"
FALLBACK_TOKEN_FILE = "~/.drasyl/auth.token"
DEFAULT_RUN_DIR = "/run/drasyl"
RUN_DIR_ENV = "DRASYL_RUN_DIR"
SOCKET_NAME = "api.sock"
TOKEN_BYTES = 24
MAX_CONNECTIONS = 64  # per listener: a flood on TCP leaves the Unix socket usable
HEADER_TIMEOUT_S = 5.0
KEEPALIVE_S = 5.0
CONNECTION_LIFETIME_S = 60.0
MAX_BODY = 64 * 1024
VERBS = {"add": "added", "remove": "removed", "enable": "enabled", "disable": "disabled"}


class AgentError(DrasylError):
    """An API request the agent refuses; the message is shown to the user as the reason."""


class AgentControl(Protocol):
    """What the API asks of the agent. Methods may be plain or ``async``.

    ``add``/``remove``/``enable``/``disable`` take the text as the user typed it and raise
    :class:`AgentError` (or another :class:`~drasyl.errors.DrasylError`) with the reason,
    e.g. ``Network already exists: <url>``; the API wraps it into drasyl-rs' message.
    ``add`` may return what it found out (``; this node is a member as 10.1.0.3``), which
    replaces `` successfully`` in the answer.
    """

    def status(self) -> dict[str, Any]: ...
    def add(self, url: str, force: bool = False) -> str | None: ...
    def remove(self, url: str) -> None: ...
    def enable(self, url: str) -> None: ...
    def disable(self, url: str) -> None: ...
    def ping(self, peer: str, timeout: float) -> dict[str, Any]: ...
    def netcheck(self) -> dict[str, Any]: ...


@functools.cache  # status asks often (the agent's watch every 2 s); the version does not change
def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # here: 10 modules, 0.3 MiB of RSS

    try:
        return version("drasyl")
    except PackageNotFoundError:
        return "unknown"


def config_status(config: AgentConfig) -> dict[str, Any]:
    """The status as far as config.toml knows it: no runtime state, no secrets."""
    return {
        "version": package_version(),
        "public_key": config.identity.public_key_hex,
        "mtu": config.mtu,
        "super_peers": [
            {"url": str(sp), "public_key": sp.public_key.hex(), "address": format_host_port(sp.host, sp.port),
             "transport": None, "rtt_ms": None, "state": "no answer", "reason": "not contacted yet",
             "unanswered_s": None, "default": False}
            for sp in config.super_peers
        ],
        "networks": [
            {"config_url": mask_url(n.config_url), "name": n.name, "disabled": n.disabled,
             "state": "disabled" if n.disabled else "pending", "subnet": None, "ip": None,
             "subnet6": None, "ip6": None, "error": None,
             "insecure": is_insecure(n.config_url), "refused": [], "warnings": []}
            for n in config.networks
        ],
        "peers": [],
        "conflicts": [],
        "routes": [],
        "drops": {},
    }


# --- listen address and token file ------------------------------------------------------------


class TokenFile:
    """The bearer token: ``path`` (the agent's), else ``fallback`` (copied there for users)."""

    def __init__(self, path: str | os.PathLike[str] = DEFAULT_TOKEN_FILE, fallback: str = FALLBACK_TOKEN_FILE) -> None:
        self.path = Path(path)
        self.fallback = Path(os.path.expanduser(fallback))

    def read(self) -> str:
        """The token, trimmed; :class:`AgentError` saying which files were tried and why."""
        return self.read_with_owner()[0]

    def read_with_owner(self) -> tuple[str, int]:
        """The token and the uid owning its file: the CLI sends it to no other uid but root."""
        reasons = []
        for path in dict.fromkeys((self.path, self.fallback)):
            try:
                with open(path, errors="replace") as fh:
                    token, owner = fh.read().strip(), os.fstat(fh.fileno()).st_uid
            except OSError as exc:
                reasons.append(f"{str(path)!r}: {exc.strerror}")
                continue
            if token:
                return token, owner
            reasons.append(f"{str(path)!r}: empty")
        raise AgentError("cannot read the API token: " + "; ".join(reasons))

    def ensure(self, length: int = TOKEN_BYTES) -> None:
        """Create ``path`` with a random token if no token can be read (never overwrites)."""
        try:
            self.read()
            return
        except AgentError as missing:
            if os.path.lexists(self.path):
                raise
            reason = missing
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise AgentError(f"{reason}; cannot create {str(self.path)!r}: {exc.strerror}") from None
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(length))
        log.info("Created API token file %s", self.path)


# --- who is behind a path or a port ----------------------------------------------------------


def socket_path(run_dir: str | os.PathLike[str]) -> Path:
    """The agent's Unix socket in ``run_dir``."""
    return Path(run_dir) / SOCKET_NAME


def uid_names(owners: tuple[int, ...]) -> str:
    """``root or uid 1000``: who may hold what the agent serves."""
    return " or ".join(dict.fromkeys("root" if uid == 0 else f"uid {uid}" for uid in owners))


def untrusted(path: Path, owners: tuple[int, ...]) -> str | None:
    """Why ``path`` may not be the agent's: owned by a uid not in ``owners``, or a directory
    group or others may write to (they could put their own socket there); None if it is."""
    st = os.stat(path)
    if st.st_uid not in owners:
        return f"{path} is owned by uid {st.st_uid}, not by {uid_names(owners)}"
    if stat.S_ISDIR(st.st_mode) and st.st_mode & 0o022:
        return f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


TCP_ESTABLISHED, TCP_SYN_RECV, TCP_LISTEN = "01", "03", "0A"
Endpoint = tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]


def _endpoint(text: str) -> Endpoint:
    """``0100007F:57FF`` of /proc/net/tcp{,6}: 32-bit words in host byte order; v4-mapped as v4."""
    addr, port = text.split(":")
    words = [int(addr[i:i + 8], 16) for i in range(0, len(addr), 8)]
    ip = ipaddress.ip_address(struct.pack(f"={len(words)}I", *words))
    return getattr(ip, "ipv4_mapped", None) or ip, int(port, 16)


def _tcp_sockets() -> Iterator[tuple[Endpoint, Endpoint, str, int]]:
    """(local, remote, state, uid) of the TCP sockets in this process' network namespace."""
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as fh:
                lines = fh.read().splitlines()[1:]
        except FileNotFoundError:  # no IPv6
            continue
        for line in lines:
            fields = line.split()
            yield _endpoint(fields[1]), _endpoint(fields[2]), fields[3], int(fields[7])


def _address(sockname: tuple) -> Endpoint:
    ip = ipaddress.ip_address(sockname[0])
    return getattr(ip, "ipv4_mapped", None) or ip, sockname[1]


def peer_uid(sock: socket.socket) -> int | None:
    """The uid behind the other end of this TCP connection, None if it is not on this host.

    The accepted socket (or the request waiting to be accepted) carries the uid of the
    process that created the listener, whoever holds it now, so this names exactly the one
    that gets what is sent, also with wildcard binds, SO_REUSEPORT or v4-mapped listeners.
    """
    mine, peer = _address(sock.getsockname()), _address(sock.getpeername())
    for local, remote, state, uid in _tcp_sockets():
        if local == peer and remote == mine and state in (TCP_ESTABLISHED, TCP_SYN_RECV):
            return uid
    return None


def listener_uids(host: str, port: int) -> list[int]:
    """The uids of the sockets listening on ``host:port`` (or on the port of any address)."""
    try:
        wanted = ipaddress.ip_address(host)
    except ValueError:  # a name: any address may be it
        wanted = None
    return sorted({uid for (ip, p), _, state, uid in _tcp_sockets() if state == TCP_LISTEN and p == port
                   and (wanted is None or ip == wanted or ip.is_unspecified)})


# --- the server -------------------------------------------------------------------------------


def _error(status: int, message: str) -> web.Response:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return web.json_response({"error": message}, status=status, headers=headers)


class ApiServer:
    """The REST API on ``<run_dir>/api.sock`` and, unless ``listen`` is None, on TCP
    ``(host, port)`` (port 0: any free port, see :attr:`port`)."""

    def __init__(self, control: AgentControl, token: TokenFile, listen: tuple[str, int] | None,
                 run_dir: str | os.PathLike[str] = DEFAULT_RUN_DIR) -> None:
        self._control = control
        self._token = token
        self._listen = listen
        #: The Unix socket's path.
        self.socket = socket_path(run_dir)
        self._socket_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the socket we bound
        self._runner: web.AppRunner | None = None
        self._token_problem: str | None = None  # last logged
        #: Why a listener is not serving (logged once at start); None while it serves.
        self.socket_error: str | None = None
        self.tcp_error: str | None = None
        #: Requests that failed with an unexpected exception (``internal_error``).
        self.errors: Counter[str] = Counter()
        self._faults = FaultLog(self.errors)
        #: Open connections by listener (``unix``, ``tcp``).
        self.connections: Counter[str] = Counter()
        #: Connections closed by the bounds: ``too_many_connections``, ``header_timeout``, ``lifetime``.
        self.dropped: Counter[str] = Counter()
        app = web.Application(middlewares=[self._guard], client_max_size=MAX_BODY)
        app.router.add_get("/status", self._status)
        app.router.add_post("/network/{verb:add|remove|enable|disable}", self._network)
        app.router.add_post("/ping", self._ping)
        app.router.add_get("/netcheck", self._netcheck)
        self._app = app

    @property
    def port(self) -> int | None:
        """The TCP port listened on; None: no TCP listener."""
        assert self._runner is not None, "not started"
        return next((address[1] for address in self._runner.addresses if isinstance(address, tuple)), None)

    def listening(self) -> dict[str, str | None]:
        """The ``api`` part of the status."""
        port = self.port
        return {"socket": None if self.socket_error else str(self.socket),
                "tcp": None if port is None or self._listen is None else format_host_port(self._listen[0], port),
                "socket_error": self.socket_error, "tcp_error": self.tcp_error}

    async def start(self) -> None:
        """Create the token file if needed, then listen on the socket and on TCP.

        One listener failing is logged once and kept in :attr:`socket_error` or
        :attr:`tcp_error`; :class:`AgentError` only when neither listens.
        """
        self._token.ensure()
        runner = _BoundedRunner(self)
        await runner.setup()
        self.socket_error = await self._serve_socket(runner)
        self.tcp_error = None if self._listen is None else await self._serve_tcp(runner, *self._listen)
        errors = [e for e in (self.socket_error, self.tcp_error) if e]
        if self.socket_error and (self._listen is None or self.tcp_error):
            await runner.cleanup()
            raise AgentError("; ".join(errors))
        self._runner = runner
        for error in errors:
            log.error("%s", error)
        listening = self.listening()
        log.info("REST API listening on %s", " and ".join(filter(None, (listening["socket"], listening["tcp"]))))

    async def _serve_socket(self, runner: web.AppRunner) -> str | None:
        """Listen on :attr:`socket`; why not."""
        site = web.UnixSite(runner, str(self.socket))
        try:
            _prepare_run_dir(self.socket.parent)
            _refuse_live_socket(self.socket)
            await site.start()  # asyncio removes a stale socket file
            os.chmod(self.socket, 0o666)
            st = os.stat(self.socket)
        except AgentError as exc:
            return str(exc)
        except OSError as exc:
            if site in runner.sites:
                await site.stop()
            return f"REST API cannot listen on {self.socket}: {_why(exc)}"
        self._socket_id = (st.st_dev, st.st_ino)
        return None

    async def _serve_tcp(self, runner: web.AppRunner, host: str, port: int) -> str | None:
        """Listen on ``host:port``; why not, naming who holds the port."""
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await site.stop()
            holders = listener_uids(host, port) if exc.errno == errno.EADDRINUSE else []
            held = f" (held by {', '.join(f'uid {uid}' for uid in holders)})" if holders else ""
            return f"REST API cannot listen on {format_host_port(host, port)}: {_why(exc)}{held}"
        return None

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        try:  # ours only: another agent may have replaced it meanwhile
            st = os.stat(self.socket)
            if (st.st_dev, st.st_ino) == self._socket_id:
                os.unlink(self.socket)
        except FileNotFoundError:
            pass

    @web.middleware
    async def _guard(self, request: web.Request, handler) -> web.StreamResponse:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        given = given.strip()
        if scheme.lower() != "bearer" or not given:
            return _error(401, "bearer token missing")
        try:
            expected = self._token.read()
        except AgentError as exc:
            if str(exc) != self._token_problem:  # once, not per request: clients must not flood the log
                self._token_problem = str(exc)
                log.error("%s", exc)
            return _error(500, "token file not found")
        self._token_problem = None
        if not hmac.compare_digest(given.encode(errors="replace"), expected.encode(errors="replace")):
            return _error(401, "token wrong")
        try:
            return await handler(request)
        except web.HTTPException as exc:
            return _error(exc.status, exc.reason.lower())
        except Exception:  # a bug in the agent must not take the API down: count, log, answer
            self._faults.report(f"answering {request.method} {request.path}")
            return _error(500, "internal error")

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response({**await _call(self._control.status), "api": self.listening()})

    async def _network(self, request: web.Request) -> web.Response:
        verb = request.match_info["verb"]
        body = await _json_body(request)
        if isinstance(body, web.Response):
            return body
        url = body.get("config_url") if isinstance(body, dict) else None
        if not isinstance(url, str):
            return _error(422, 'the body must be {"config_url": "<url>"}')
        force = body.get("force", False)
        if not isinstance(force, bool) or (force and verb != "add"):
            return _error(422, '"force" must be true or false, and only add takes it')
        try:
            found = await (_call(self._control.add, url, force) if force else _call(getattr(self._control, verb), url))
        except DrasylError as exc:
            return web.json_response(
                {"success": False, "message": f"Failed to {verb} network '{mask_url(url)}': {exc}"})
        return web.json_response({"success": True,
                                  "message": f"Network '{mask_url(url)}' {VERBS[verb]}{found or ' successfully'}"})

    async def _ping(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        if isinstance(body, web.Response):
            return body
        peer, timeout = (body.get("peer"), body.get("timeout")) if isinstance(body, dict) else (None, None)
        if not isinstance(peer, str) or not isinstance(timeout, (int, float)) or isinstance(timeout, bool):
            return _error(422, 'the body must be {"peer": "<name, IP or key>", "timeout": <seconds>}')
        try:
            return web.json_response(await _call(self._control.ping, peer, float(timeout)))
        except DrasylError as exc:
            return web.json_response({"success": False, "message": str(exc)})

    async def _netcheck(self, request: web.Request) -> web.Response:
        return web.json_response(await _call(self._control.netcheck))


def _why(exc: OSError) -> str:
    """``Address already in use``, not asyncio's ``error while attempting to bind on …``."""
    return os.strerror(exc.errno) if exc.errno else str(exc)


def _prepare_run_dir(path: Path) -> None:
    """Create the run directory 0755 (whatever the umask); refuse one others could write to."""
    try:
        path.mkdir()
        path.chmod(0o755)
    except FileExistsError:
        pass
    problem = untrusted(path, (os.geteuid(),))
    if problem is not None:
        raise AgentError(f"REST API: refusing the run directory: {problem}")


def _refuse_live_socket(path: Path) -> None:
    """Another agent answering on ``path`` keeps it: binding would take its socket away."""
    with socket.socket(socket.AF_UNIX) as probe:
        probe.setblocking(False)  # a full backlog must not stall the start: EAGAIN, an OSError
        try:
            probe.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            return
    raise AgentError(f"REST API cannot listen on {path}: another agent is serving on it")


# --- bounded connections ----------------------------------------------------------------------


class _BoundedHandler(web.RequestHandler):
    """One API connection: admitted only below :data:`MAX_CONNECTIONS` on its listener, closed
    when its first request's headers take longer than :data:`HEADER_TIMEOUT_S` (later ones:
    the keep-alive timeout) or it is older than :data:`CONNECTION_LIFETIME_S`."""

    def __init__(self, manager: _BoundedServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._api = manager.api
        self._listener: str | None = None  # "unix" or "tcp" once admitted
        self._timers: list[asyncio.TimerHandle] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        listener = "unix" if sock is not None and sock.family == socket.AF_UNIX else "tcp"
        if self._api.connections[listener] >= MAX_CONNECTIONS:
            self._api.dropped["too_many_connections"] += 1
            transport.abort()
            return
        self._listener = listener
        self._api.connections[listener] += 1
        loop = asyncio.get_running_loop()
        self._timers = [loop.call_later(HEADER_TIMEOUT_S, self._drop, "header_timeout"),
                        loop.call_later(CONNECTION_LIFETIME_S, self._drop, "lifetime")]
        super().connection_made(transport)

    def headers_received(self) -> None:
        self._timers[0].cancel()

    def _drop(self, reason: str) -> None:
        self._api.dropped[reason] += 1
        self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._listener is None:  # refused in connection_made
            return
        self._api.connections[self._listener] -= 1
        for timer in self._timers:
            timer.cancel()
        super().connection_lost(exc)


class _BoundedServer(web.Server):
    """aiohttp's server with :class:`_BoundedHandler` connections (aiohttp has no header timeout)."""

    def __init__(self, plain: web.Server, api: ApiServer) -> None:
        super().__init__(plain.request_handler, request_factory=self._request, keepalive_timeout=KEEPALIVE_S,
                         access_log=None)
        self.api = api
        self._plain_request = plain.request_factory

    def __call__(self) -> _BoundedHandler:
        return _BoundedHandler(self, loop=self._loop, **self._kwargs)

    def _request(self, message: Any, payload: Any, protocol: _BoundedHandler, writer: Any, task: Any) -> web.BaseRequest:
        protocol.headers_received()  # called once a request's headers are complete
        return self._plain_request(message, payload, protocol, writer, task)


class _BoundedRunner(web.AppRunner):
    """The app's runner with a :class:`_BoundedServer`."""

    def __init__(self, api: ApiServer) -> None:
        super().__init__(api._app, handle_signals=False)
        self._api = api

    async def _make_server(self) -> web.Server:
        return _BoundedServer(await super()._make_server(), self._api)


async def _json_body(request: web.Request) -> Any:
    """The request's JSON body, or the error answer (415 not JSON content, 400 not valid JSON)."""
    if request.content_type != "application/json":
        return _error(415, "Content-Type must be application/json")
    try:
        return json.loads(await request.text())
    except ValueError:
        return _error(400, "the body is not valid JSON")


async def _call(method, *args: Any) -> Any:
    result = method(*args)
    return await result if inspect.isawaitable(result) else result
