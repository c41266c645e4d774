"""The agent's local REST API (agent.md §6) on aiohttp, and the bearer-token file.

Endpoints, all behind ``Authorization: Bearer <token>``: ``GET /status`` and
``POST /network/{add,remove,enable,disable}`` with ``{"config_url": "<url>"}``, answering
``{"success": bool, "message": str}`` with drasyl-rs' messages (``Network '<url>' added
successfully``; ``Failed to add network '<url>': <reason>``). The token file is re-read on
every request (main path, then ``~/.drasyl/auth.token``) and created at start with 24 random
bytes as hex, mode 0600, when neither can be read. Errors are JSON ``{"error": "…"}``: 401
``bearer token missing`` / ``token wrong``, 500 ``token file not found``, and, where axum
answers in plain text, 415 (Content-Type not application/json), 400 (not JSON), 422 (no
string ``config_url``), 404, 405, and 500 ``internal error`` (an unexpected exception in
the agent: counted, logged at most every 10 s, the API keeps serving).

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
          "default": true                       # the super peer relaying now (lowest RTT)
      }],
      "networks": [{
          "config_url": "https://user:***@host/net.toml",   # as written, password masked
          "name": "Acme" | null, "disabled": false,
          "state": "active" | "disabled" | "pending" | "not a member" | "error",
          "subnet": "10.1.0.0/24" | null, "ip": "10.1.0.1" | null,
          "error": "<last fetch or validation error>" | null
      }],
      "peers": [{
          "public_key": "<64 hex>", "hostname": "fileserver" | null, "ip": "10.1.0.2" | null,
          "path": "direct" | "relayed" | "tcp" | null,
          "rtt_ms": 8.1 | null,
          "last_rx_s": 1.5 | null,              # seconds since the last packet from it
          "rx_bytes": 0, "tx_bytes": 0          # overlay bytes in / out
      }],
      "drops": {"<reason>": 0}                  # packets dropped by the agent, by reason
    }

:func:`config_status` produces the parts config.toml knows; the agent fills in the rest.
The schema is ours, not drasyl-rs' (whose ``Status`` carries the secret key and session keys),
so drasyl-rs' CLI cannot read it and ours cannot read drasyl-rs'.
"""

from __future__ import annotations

import errno
import hmac
import inspect
import json
import logging
import os
import secrets
from collections import Counter
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from ..errors import ConfigError, DrasylError
from ..net.faults import FaultLog
from ..urls import format_host_port
from .config import AgentConfig, mask_url

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:22527"
LISTEN_ENV = "DRASYL_API_LISTEN"
DEFAULT_TOKEN_FILE = "/etc/drasyl/auth.token"
FALLBACK_TOKEN_FILE = "~/.drasyl/auth.token"
TOKEN_BYTES = 24
MAX_BODY = 64 * 1024
VERBS = {"add": "added", "remove": "removed", "enable": "enabled", "disable": "disabled"}


class AgentError(DrasylError):
    """An API request the agent refuses; the message is shown to the user as the reason."""


class AgentControl(Protocol):
    """What the API asks of the agent. Methods may be plain or ``async``.

    ``add``/``remove``/``enable``/``disable`` take the URL as the user typed it and raise
    :class:`AgentError` (or another :class:`~drasyl.errors.DrasylError`) with the reason,
    e.g. ``Network already exists: <url>``; the API wraps it into drasyl-rs' message.
    """

    def status(self) -> dict[str, Any]: ...
    def add(self, url: str) -> None: ...
    def remove(self, url: str) -> None: ...
    def enable(self, url: str) -> None: ...
    def disable(self, url: str) -> None: ...


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
             "transport": None, "rtt_ms": None, "default": False}
            for sp in config.super_peers
        ],
        "networks": [
            {"config_url": mask_url(n.config_url), "name": n.name, "disabled": n.disabled,
             "state": "disabled" if n.disabled else "pending", "subnet": None, "ip": None, "error": None}
            for n in config.networks
        ],
        "peers": [],
        "drops": {},
    }


# --- listen address and token file ------------------------------------------------------------


def parse_listen(text: str) -> tuple[str, int] | None:
    """``host:port`` or ``[v6]:port``; empty means "no API" (drasyl-rs then exits: [bug])."""
    text = text.strip()
    if not text:
        return None
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        sep = ""
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"API address {text!r} is invalid: expected host:port or [ipv6]:port")
    return host, int(port)


class TokenFile:
    """The bearer token: ``path`` (the agent's), else ``fallback`` (copied there for users)."""

    def __init__(self, path: str | os.PathLike[str] = DEFAULT_TOKEN_FILE, fallback: str = FALLBACK_TOKEN_FILE) -> None:
        self.path = Path(path)
        self.fallback = Path(os.path.expanduser(fallback))

    def read(self) -> str:
        """The token, trimmed; :class:`AgentError` saying which files were tried and why."""
        reasons = []
        for path in dict.fromkeys((self.path, self.fallback)):
            try:
                token = path.read_text(errors="replace").strip()
            except OSError as exc:
                reasons.append(f"{str(path)!r}: {exc.strerror}")
                continue
            if token:
                return token
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


# --- the server -------------------------------------------------------------------------------


def _error(status: int, message: str) -> web.Response:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return web.json_response({"error": message}, status=status, headers=headers)


class ApiServer:
    """The REST API on ``host:port`` (port 0: any free port, see :attr:`port`)."""

    def __init__(self, control: AgentControl, token: TokenFile, host: str = "127.0.0.1", port: int = 22527) -> None:
        self._control = control
        self._token = token
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        #: Requests that failed with an unexpected exception (``internal_error``).
        self.errors: Counter[str] = Counter()
        self._faults = FaultLog(self.errors)
        app = web.Application(middlewares=[self._guard], client_max_size=MAX_BODY)
        app.router.add_get("/status", self._status)
        app.router.add_post("/network/{verb:add|remove|enable|disable}", self._network)
        self._app = app

    @property
    def port(self) -> int:
        assert self._runner is not None, "not started"
        return self._runner.addresses[0][1]

    async def start(self) -> None:
        """Create the token file if needed, then listen; :class:`AgentError` on failure."""
        self._token.ensure()
        runner = web.AppRunner(self._app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port, reuse_address=True).start()
        except OSError as exc:
            await runner.cleanup()
            why = exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))
            raise AgentError(f"REST API cannot listen on {format_host_port(self._host, self._port)}: {why}") from None
        self._runner = runner

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _guard(self, request: web.Request, handler) -> web.StreamResponse:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        given = given.strip()
        if scheme.lower() != "bearer" or not given:
            return _error(401, "bearer token missing")
        try:
            expected = self._token.read()
        except AgentError as exc:
            log.error("%s", exc)
            return _error(500, "token file not found")
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
        return web.json_response(await _call(self._control.status))

    async def _network(self, request: web.Request) -> web.Response:
        verb = request.match_info["verb"]
        if request.content_type != "application/json":
            return _error(415, "Content-Type must be application/json")
        try:
            body = json.loads(await request.text())
        except ValueError:
            return _error(400, "the body is not valid JSON")
        url = body.get("config_url") if isinstance(body, dict) else None
        if not isinstance(url, str):
            return _error(422, 'the body must be {"config_url": "<url>"}')
        try:
            await _call(getattr(self._control, verb), url)
        except DrasylError as exc:
            return web.json_response(
                {"success": False, "message": f"Failed to {verb} network '{mask_url(url)}': {exc}"})
        return web.json_response({"success": True, "message": f"Network '{mask_url(url)}' {VERBS[verb]} successfully"})


async def _call(method, *args: Any) -> Any:
    result = method(*args)
    return await result if inspect.isawaitable(result) else result
