"""The ``drasyl-agent`` command: ``run`` the agent, or talk to a running one over its REST API.

Subcommands as drasyl-rs' ``drasyl`` binary: ``run``, ``status``, ``version``, ``add``,
``remove``, ``enable``, ``disable``, and ours: ``ping`` (one ``POST /ping`` per probe, paced
here, sent by the agent; :mod:`drasyl.agent.ping`), ``netcheck`` (``GET /netcheck``:
:mod:`drasyl.agent.netcheck`), ``completion bash|zsh`` and ``manpage``
(:mod:`.docgen`) and ``--version``/``-V``. Each subcommand lists only the options it uses;
all of them are also accepted before the subcommand. Differences: defaults are the service's files
(``/etc/drasyl/config.toml``, ``/etc/drasyl/auth.token``) instead of the working directory;
the client honours ``--api``/``DRASYL_API_LISTEN`` like the server (drasyl-rs always dials
localhost:22527); ``status --json``; ``status`` shows no secret key; ``--log-level`` falls
back to ``DRASYL_LOG_LEVEL``/``RUST_LOG`` (drasyl-rs' default hides ``RUST_LOG``).

The client never hands the token to a process that is not the agent (any local user can
bind 127.0.0.1:22527 while the agent is down): it talks over the agent's Unix socket
``<run dir>/api.sock`` (``--run-dir``/``DRASYL_RUN_DIR``, default ``/run/drasyl``) when
that exists and both it and its directory are owned by root or by the caller and the
directory is writable by nobody else (an untrusted socket is refused, not skipped); else
over TCP, sending the token only after ``/proc/net/tcp`` shows that the other end of the
connection belongs to root or to the owner of the token file. It is one synchronous
``http.client`` request on a socket it connected itself (no event loop, quick start-up, no
proxies: the API is local). Exit codes: 0 success, 1 any failure (one line on stderr,
never a traceback), 2 usage errors. ``run`` configures logging and hands over to
``drasyl.agent.daemon.run(options) -> int`` with ``options.agent_config`` (the loaded
:class:`~drasyl.agent.config.AgentConfig`, generated on the first start), ``options.config``
and ``options.token`` (paths), ``options.listen`` (``(host, port)`` of the TCP API, or None:
none), ``options.run_dir`` (the API socket's directory) and ``options.log_level`` (int); a
:class:`~drasyl.errors.DrasylError` it raises becomes one line on stderr and exit code 1.
This module only parses, formats and dials.
"""
from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import platform
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from .. import eventloop, native
from ..env import TRACE, env_bool, env_int, log_level
from ..errors import DrasylError
from ..identity import DEFAULT_POW_DIFFICULTY, mode_warning
from ..progress import PowProgress
from ..urls import format_host_port, parse_listen
from .api import (
    DEFAULT_LISTEN,
    DEFAULT_RUN_DIR,
    DEFAULT_TOKEN_FILE,
    FALLBACK_TOKEN_FILE,
    LISTEN_ENV,
    RUN_DIR_ENV,
    SOCKET_NAME,
    AgentError,
    TokenFile,
    package_version,
    peer_uid,
    socket_path,
    uid_names,
    untrusted,
)
from .config import METRICS_ENV, AgentConfig, is_insecure, mask_url
from .ping import MAX_TIMEOUT_S

log = logging.getLogger("drasyl.agent")

PROG = "drasyl-agent"
DEFAULT_CONFIG = "/etc/drasyl/config.toml"
CLIENT_TIMEOUT_S = 10.0
SHORT_KEY = 12
LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1"}
DEFAULT_PINGS = 5
UNTIL_DIRECT_PINGS = 30

SUMMARY = "join this machine to drasyl overlay networks"
DESCRIPTION = """\
drasyl agent: joins this machine to drasyl overlay networks through a TUN device named
'drasyl' and reaches the other members by IP and by name, directly when NATs allow it,
relayed by a super peer otherwise. 'run' starts the agent (as root or with CAP_NET_ADMIN);
the other commands talk to a running agent over its REST API."""

FILES = (
    (DEFAULT_CONFIG, "identity, super_peers, [[network]]s, mtu, [metrics] (--config); created with a new identity "
                     "by the first 'run' (see config.example.toml). A misspelt key (super_peer) is an "
                     "error; the public drasyl.org super peers are used only when super_peers is absent"),
    (DEFAULT_TOKEN_FILE, f"API bearer token (--token); 'run' creates it (mode 0600) when missing. Clients fall "
                         f"back to {FALLBACK_TOKEN_FILE}: copy the token there to use the CLI without root"),
    (f"{DEFAULT_RUN_DIR}/{SOCKET_NAME}", "the API's Unix socket (--run-dir); 'run' creates the directory (0755) "
                                         "and refuses one that another uid owns or others may write to. Clients "
                                         "use the socket when it and its directory belong to root or to them, "
                                         "else TCP, where they send the token only if /proc/net/tcp shows the "
                                         "port is held by root or the token file's owner (never to a squatter)"),
)
ENVIRONMENT = (
    (LISTEN_ENV, f"REST API TCP address of the server and the clients (default {DEFAULT_LISTEN}; empty: Unix "
                 "socket only); --api overrides it"),
    (RUN_DIR_ENV, f"directory of the API socket (default {DEFAULT_RUN_DIR}); --run-dir overrides it"),
    (METRICS_ENV, "Prometheus /metrics address of 'run' in place of [metrics] listen (default: that key, else "
                  "off; empty: off); an address that is not loopback needs [metrics] token_file"),
    ("DRASYL_LOG_LEVEL, RUST_LOG", "log level when --log-level is not given (default info)"),
    ("DRASYL_MIN_POW_DIFFICULTY", "proof-of-work bits of a new identity and required of the one in config.toml "
                                  "(default 24)"),
    ("DRASYL_ARM_MESSAGES", "true|false: encryption (default true; false raises the MTU limit from 1345 to 1393)"),
    ("DRASYL_UDP_PORT", "UDP port of the node (default derived from the public key; 0: any free port)"),
    ("DRASYL_UDP_ADDRS", "space-separated local IPs to bind (default every usable interface address, followed "
                         "as they change)"),
    ("DRASYL_ENFORCE_TCP", "true: reach super peers over TCP only (default false)"),
    ("DRASYL_MAX_PEERS", "node peer table limit, 0 unlimited (default 8192)"),
    ("DRASYL_HELLO_TIMEOUT", "ms until an unanswered path is stale (default 30000)"),
    ("DRASYL_HELLO_MAX_AGE", "ms a HELLO/ACK may be old (default 60000)"),
    ("DRASYL_HOUSEKEEPING_INTERVAL", "ms between the node's HELLO rounds (default 5000)"),
    ("DRASYL_PROCESS_UNITES", "false: no hole punching, always relayed (default true). A value that does not "
                              "parse is an error naming the variable"),
    ("DRASYL_EVENT_LOOP", "auto|uvloop|asyncio: the event loop of 'run' (default auto: uvloop where installed)"),
    ("DRASYL_NATIVE", "auto|on|off: the C data path of 'run' for established peers (default auto: where it was "
                      "built; on: an error when it was not; off: the Python data path)"),
)
SIGNALS = ("run: SIGHUP reloads super_peers and the [[network]]s of --config without dropping the TUN device "
           "(identity, mtu and [metrics] need a restart; a broken file is logged and the running configuration kept); "
           "SIGTERM/SIGINT remove routes, addresses, the hosts names and the TUN device, then exit 0.")
EXIT_STATUS = "0 success, 1 failure (one line on stderr), 2 usage error."
LOG_LEVELS = ("error", "warn", "info", "debug", "trace", "off")
LOG_HELP = ("log level: error, warn, info, debug (drasyl's own debug output), trace (also that of the "
            "libraries: pyroute2, aiohttp, asyncio) or off (default $DRASYL_LOG_LEVEL, $RUST_LOG, info)")


def _columns(items: Sequence[tuple[str, str]], width: int = 28) -> str:
    """``name  text`` with the text wrapped in a column, for --help."""
    out = []
    for name, text in items:
        lines = textwrap.wrap(text, 94 - width)
        if len(name) >= width - 2:
            out.append(f"  {name}")
        else:
            out.append(f"  {name:<{width - 2}}{lines.pop(0)}")
        out += [" " * width + line for line in lines]
    return "\n".join(out)


EPILOG = "\n\n".join([
    "Options may come before COMMAND (drasyl-agent --token FILE status); --config, --log-level and\n"
    "--log-file are run's, --token, --api and --run-dir also the client commands'.",
    "files:\n" + _columns(FILES),
    "environment:\n" + _columns(ENVIRONMENT),
    "signals:\n" + textwrap.indent(textwrap.fill(SIGNALS, 92), "  "),
    "exit status: " + EXIT_STATUS,
])


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    for name, default in (("config", DEFAULT_CONFIG), ("token", DEFAULT_TOKEN_FILE), ("api", None),
                          ("run_dir", os.environ.get(RUN_DIR_ENV) or DEFAULT_RUN_DIR),
                          ("log_level", None), ("log_file", None)):
        if not hasattr(args, name):
            setattr(args, name, default)
    try:
        return COMMANDS[args.command](args)
    except DrasylError as exc:
        print(f"{PROG} {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


# --- commands ---------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    from . import daemon  # here: the client commands need neither the node nor the TUN code

    args.listen = _listen(args)
    eventloop.choice()  # a bad DRASYL_EVENT_LOOP fails before anything is created
    native.choice()  # so does a bad DRASYL_NATIVE
    _configure_logging(args)
    args.agent_config = load_config(args.config)
    return daemon.run(args)


def load_config(path: str) -> AgentConfig:
    """config.toml for ``run``: generated on the first start with drasyl-sp's progress line.

    ``DRASYL_MIN_POW_DIFFICULTY`` and ``DRASYL_ARM_MESSAGES`` are read strictly (a typo is an
    error, not the default); unknown keys are logged as warnings.
    """
    difficulty = env_int("DRASYL_MIN_POW_DIFFICULTY", DEFAULT_POW_DIFFICULTY, 0, 64)
    arm_messages = env_bool("DRASYL_ARM_MESSAGES", True)
    progress = PowProgress(sys.stderr)
    try:
        config = AgentConfig.load_or_create(path, difficulty, progress, _announce_generation, arm_messages)
    finally:
        progress.finish()
    for warning in config.warnings:
        log.warning("%s", warning)
    exposed = mode_warning(path, "config file")
    if exposed is not None:
        log.warning("%s", exposed)
    log.info("I am %s", config.identity.public_key_hex)
    return config


def _announce_generation(path: str) -> None:
    what = "has no [identity]" if os.path.lexists(path) else "does not exist"
    print(f"Config file '{path}' {what}: generating a new identity (proof of work, this may take a while)...",
          flush=True)


def _status(args: argparse.Namespace) -> int:
    status = _request(args, "/status")
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return 0


def _network(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"config_url": args.url}
    if getattr(args, "force", False):
        body["force"] = True
    answer = _request(args, f"/network/{args.command}", body)
    if not isinstance(answer, dict) or not isinstance(answer.get("message"), str):
        raise AgentError("the agent's API answered without a message")
    if answer.get("success") is True:
        print(_printable(answer["message"]))
        if args.command in ("add", "enable") and is_insecure(args.url):
            print(f"warning: {_printable(mask_url(args.url))} is fetched over plain http: anyone on the way can "
                  "rewrite it and decide who is in this network; use https:// if the server offers it",
                  file=sys.stderr)
        return 0
    print(_printable(answer["message"]), file=sys.stderr)
    return 1


def _version(args: argparse.Namespace) -> int:
    print(version_text())
    return 0


def version_text() -> str:
    commit = _git_commit()
    return (f"Version : {package_version()}" + (f" ({commit})" if commit else "") + "\n"
            f"Python  : {platform.python_version()} ({platform.python_implementation()}, {sys.executable})")


def _completion(args: argparse.Namespace) -> int:
    from . import docgen

    print(docgen.COMPLETIONS[args.shell](_parser()), end="")
    return 0


def _manpage(args: argparse.Namespace) -> int:
    from . import docgen

    print(docgen.manpage(_parser(), package_version(), SUMMARY, {
        "FILES": FILES, "ENVIRONMENT": ENVIRONMENT, "SIGNALS": SIGNALS, "EXIT STATUS": EXIT_STATUS}), end="")
    return 0


def _ping(args: argparse.Namespace) -> int:
    """Probes ``-i`` apart until ``-c`` (or the first direct reply with ``--until-direct``);
    0 when a reply came (with ``--until-direct``: a direct one), 1 otherwise. ^C ends early
    with the summary, as ping(8)."""
    count = args.count or (UNTIL_DIRECT_PINGS if args.until_direct else DEFAULT_PINGS)
    rtts: list[float] = []
    shown, path, sent, direct, started = args.peer, None, 0, False, 0.0
    try:
        while sent < count and not (args.until_direct and direct):
            if sent:
                time.sleep(max(0.0, started + args.interval - time.monotonic()))  # pacing
            started = time.monotonic()
            answer = _request(args, "/ping", {"peer": args.peer, "timeout": args.timeout})
            if not isinstance(answer, dict) or answer.get("success") is not True:
                message = answer.get("message") if isinstance(answer, dict) else None
                raise AgentError(_printable(str(message or "the agent's API answered without a result")))
            sent += 1
            peer = answer["peer"]
            address = peer.get("ip6") if peer.get("family") == 6 else peer["ip"]
            shown = _printable(f"{peer['hostname']} ({address})")
            now = _path_text(answer)
            if path is not None and now != path:
                print(f"path changed: {path} -> {now}")
            path = now
            if answer["reply"]:
                rtts.append(answer["rtt_ms"])
                direct = answer["path"] == "direct"
                print(f"pong from {shown} via {now} in {answer['rtt_ms']:.1f} ms", flush=True)
            else:
                print(f"no reply from {shown} within {args.timeout:g} s (path: {answer['path']})", flush=True)
    except KeyboardInterrupt:
        pass
    summary = f"{shown}: {sent} sent, {len(rtts)} received, {sent - len(rtts)} lost"
    if rtts:
        summary += f", rtt min/avg/max {min(rtts):.1f}/{sum(rtts) / len(rtts):.1f}/{max(rtts):.1f} ms"
    if args.until_direct:
        summary += ", direct path reached" if direct else ", no direct path"
    print(summary)
    return 0 if (direct if args.until_direct else rtts) else 1


def _netcheck(args: argparse.Namespace) -> int:
    """The agent's report on its super peers; 1 (report still printed) when none answered."""
    from .netcheck import format_report

    report = _request(args, "/netcheck")
    if not isinstance(report, dict) or not isinstance(report.get("super_peers"), list):
        raise AgentError("the agent's API answered without a netcheck report")
    print(json.dumps(report, indent=2) if args.json
          else "\n".join(_printable(line) for line in format_report(report).splitlines()))
    return 0 if report.get("ok") is True else 1


def _path_text(answer: dict[str, Any]) -> str:
    """``direct 203.0.113.10:22527``, ``relayed sp 7f588b40a1c2…``: the path and where it leads."""
    if answer.get("path") == "direct":
        return f"direct {answer.get('endpoint') or '?'}"
    return _printable(f"{answer.get('path') or 'no path'} sp {_short(answer.get('via'))}")


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _run, "status": _status, "version": _version, "completion": _completion, "manpage": _manpage,
    "add": _network, "remove": _network, "enable": _network, "disable": _network,
    "ping": _ping,
    "netcheck": _netcheck,
}


def _git_commit() -> str | None:
    """``<commit>[-dirty]`` when running from a git checkout; installed packages have none."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12"],
                             capture_output=True, text=True, timeout=2)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


# --- the API client ---------------------------------------------------------------------------


def _listen(args: argparse.Namespace) -> tuple[str, int] | None:
    """The API address: ``--api``, else ``DRASYL_API_LISTEN``, else 127.0.0.1:22527."""
    return parse_listen(args.api if args.api is not None else os.environ.get(LISTEN_ENV, DEFAULT_LISTEN))


def _request(args: argparse.Namespace, path: str, body: dict[str, Any] | None = None) -> Any:
    """One request to the agent; the token goes only to a socket held by root or the token's owner."""
    sock, where = _connect(args)
    with sock:
        token, owner = TokenFile(args.token).read_with_owner()
        if sock.family != socket.AF_UNIX:
            _check_holder(sock, where, owner)
        connection = http.client.HTTPConnection("localhost" if sock.family == socket.AF_UNIX else where)
        connection.sock = sock  # connected and checked: http.client must not dial again
        headers = {"Authorization": f"Bearer {token}", "Connection": "close"}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode()
        try:
            connection.request("POST" if data else "GET", path, data, headers)
            response = connection.getresponse()
            answer = response.read()
        except (OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise AgentError(f"no answer from the agent's API at {where}: {reason}") from None
    if response.status != 200:
        raise AgentError(f"the agent's API at {where} answered {response.status}: {_error_text(answer, response.reason)}")
    try:
        return json.loads(answer)
    except ValueError:
        raise AgentError(f"the agent's API at {where} answered something that is not JSON") from None


def _connect(args: argparse.Namespace) -> tuple[socket.socket, str]:
    """A connection to the agent and its address: the Unix socket if there is one we can trust
    (it and its directory owned by root or by us, the directory writable by nobody else),
    else TCP. :class:`AgentError` for an untrusted socket and when nothing answers."""
    path = socket_path(args.run_dir)
    owners = (0, os.geteuid())
    missing = []
    try:
        problem = untrusted(path, owners) or untrusted(path.parent, owners)
    except OSError:  # no socket, or not ours to see (a directory of mode 0700): TCP
        missing.append(f"no API socket at {path}")
    else:
        if problem is not None:
            raise AgentError(f"not sending the API token to {path}: {problem}")
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(CLIENT_TIMEOUT_S)
        try:
            sock.connect(str(path))
            return sock, str(path)
        except OSError as exc:
            sock.close()
            missing.append(f"{path}: {exc.strerror or exc}")
    address = _listen(args)
    if address is None:
        missing.append(f"no TCP API ({LISTEN_ENV} is empty)")
    else:
        host, port = LOOPBACK.get(address[0], address[0]), address[1]
        where = format_host_port(host, port)
        try:
            return socket.create_connection((host, port), CLIENT_TIMEOUT_S), where
        except ConnectionRefusedError:
            missing.append(f"nothing listening on {where}")
        except OSError as exc:
            missing.append(f"{where}: {exc.strerror or exc}")
    raise AgentError(f"is the agent running? ({', '.join(missing)}; "
                     "start it with 'drasyl-agent run' or 'systemctl start drasyl-agent')")


def _check_holder(sock: socket.socket, where: str, token_owner: int) -> None:
    """Anybody may bind a free TCP port: send the token only to root or the token's owner."""
    uid = peer_uid(sock)
    if uid is None:
        raise AgentError(f"not sending the API token: cannot tell who holds {where} (it is not on this host)")
    if uid not in (0, token_owner):
        raise AgentError(f"not sending the API token: {where} is held by uid {uid}, not by "
                         f"{uid_names((0, token_owner))} (is another program squatting the agent's port?)")


def _error_text(answer: bytes, reason: str) -> str:
    try:
        return str(json.loads(answer)["error"])
    except (ValueError, KeyError, TypeError):
        return reason


# --- status table -----------------------------------------------------------------------------


def format_status(status: dict[str, Any]) -> str:
    """The human view of ``GET /status`` (schema in :mod:`drasyl.agent.api`)."""
    lines = [f"Agent {status.get('version')}  public key {status.get('public_key')}  MTU {status.get('mtu')}", ""]
    lines.append("Super peers:")
    sp_rows = []
    for sp in status.get("super_peers", []):
        sp_rows.append(["*" if sp.get("default") else "", _short(sp.get("public_key")), sp.get("address"),
                        sp.get("state") or "-", sp.get("transport") or "-", _rtt(sp.get("rtt_ms"))])
        if sp.get("state") not in (None, "registered"):
            sp_rows.append([f"  {sp.get('reason')}"])
    lines += _table(["", "PUBLIC KEY", "ADDRESS", "STATE", "TRANSPORT", "RTT"], sp_rows)
    networks = status.get("networks", [])
    lines += ["", "Networks:" if networks else "Networks: none (drasyl-agent add URL)"]
    if networks:
        rows = []
        v6 = any(net.get("ip6") for net in networks)  # IPv6 columns only where there is IPv6
        for net in networks:
            state = net.get("state") or "-"
            rows.append([net.get("config_url"), net.get("name") or "-",
                         f"{state} (insecure: http)" if net.get("insecure") else state,
                         net.get("subnet") or "-", net.get("ip") or "-"]
                        + ([net.get("subnet6") or "-", net.get("ip6") or "-"] if v6 else []))
            if net.get("error"):
                rows.append([f"  error: {net['error']}"])
            rows += [[f"  refused: {line}"] for line in net.get("refused") or ()]
            rows += [[f"  warning: {line}"] for line in net.get("warnings") or ()]
        lines += _table(["URL", "NAME", "STATE", "SUBNET", "IP"] + (["SUBNET6", "IP6"] if v6 else []), rows)
    routes = status.get("routes") or []
    if routes:
        lines += ["", "Routes:"]
        lines += _table(["DESTINATION", "GATEWAY", "NETWORK", "STATE"],
                        [[r.get("dest"), r.get("gateway"), r.get("network"), r.get("state")] for r in routes])
    conflicts = status.get("conflicts") or []
    if conflicts:
        lines += ["", "Conflicts between networks (the network listed first in config.toml wins):"]
        lines += [f"  {line}" for line in conflicts]
    peers = status.get("peers", [])
    lines += ["", "Peers:" if peers else "Peers: none"]
    if peers:
        rows = []
        v6 = any(p.get("ip6") for p in peers)
        for p in peers:
            rows.append([p.get("hostname") or "-", p.get("ip") or "-"] + ([_ip6(p)] if v6 else [])
                        + [_short(p.get("public_key")), _path(p),
                           _rtt(p.get("rtt_ms")), _ago(p.get("last_rx_s")), _bytes(p.get("rx_bytes")),
                           _bytes(p.get("tx_bytes"))])
            if p.get("reason"):
                rows.append([f"  {p['reason']}"])
            if p.get("last_punch_s") is not None and p.get("path") != "direct":
                rows.append([f"  last hole punch {_ago(p['last_punch_s'])} ago: {p.get('punch_result')}"])
            if p.get("probing"):
                rows.append([f"  probing through a symmetric NAT (this side {p['probing']})"])
        lines += _table(["HOSTNAME", "IP"] + (["IP6"] if v6 else []) + ["PUBLIC KEY", "PATH", "RTT", "LAST RX", "IN",
                                                                      "OUT"], rows)
    if status.get("ipv6", {}).get("device") is False:
        lines += ["", "IPv6: off on this host (no IPv6, or the MTU is below 1280): the overlay is IPv4 only here"]
    names = status.get("names")
    if names:
        served = ", ".join(names.get("resolver") or ()) or "not listening"
        lines += ["", f"Names: {names.get('mode')} (resolver: {served}; systemd-resolved: {names.get('resolved')})"]
        lines += [f"  resolver cannot listen on {where}: {why}" for where, why in (names.get("resolver_errors") or {}).items()]
    lines += _nat_lines(status.get("nat"))
    drops = {k: v for k, v in status.get("drops", {}).items() if v}
    if drops:
        lines += ["", "Dropped packets: " + ", ".join(f"{k} {v}" for k, v in sorted(drops.items()))]
    api = status.get("api") or {}
    problems = [f"API problem: {api[key]}" for key in ("socket_error", "tcp_error") if api.get(key)]
    if problems:
        lines += ["", *problems]
    return "\n".join(_printable(line) for line in lines)


def _nat_lines(nat: dict[str, Any] | None) -> list[str]:
    """Our NAT as the node sees it, and the router's port mapping."""
    if not nat:
        return []
    lines = ["", f"NAT: mapping {nat.get('mapping') or 'unknown'}: {nat.get('summary')}"]
    pm = nat.get("port_mapping")
    if pm is None:
        lines.append("  port mapping: off ([nat] port_mapping = false)")
    elif pm.get("external"):
        expires = f", renewed before it expires in {pm['expires_in_s']} s" if pm.get("expires_in_s") is not None else ""
        lines.append(f"  port mapping: {pm['protocol'].upper()} on {pm.get('gateway')} maps {pm['internal']} "
                     f"to {pm['external']}{expires}")
    else:
        lines.append(f"  port mapping: none ({pm.get('error') or 'asking the router'})")
    return lines


def _ip6(peer: dict[str, Any]) -> str:
    """A peer's IPv6 address, marked when it has not shown that it takes IPv6 (yet)."""
    if not peer.get("ip6"):
        return "-"
    return peer["ip6"] if peer.get("ipv6") in (None, "yes") else f"{peer['ip6']} ({peer.get('ipv6')})"


def _printable(text: str) -> str:
    """``text`` without control characters: names and errors come from network configs, and
    a terminal must not run escape sequences someone else wrote."""
    return "".join(c if c.isprintable() else "?" for c in text)


def _path(peer: dict[str, Any]) -> str:
    """``direct 203.0.113.10:22527``, ``relayed via 7f588b40…``, ``tcp via …`` or ``unreachable``."""
    path = peer.get("path") or "-"
    if path == "direct" and peer.get("endpoint"):
        found = f" ({peer['found_by']})" if peer.get("found_by") not in (None, "punch") else ""
        return f"direct {peer['endpoint']}{found}"
    if path in ("relayed", "tcp") and peer.get("via"):
        return f"{path} via {_short(peer['via'])}"
    return path


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    """Left-aligned columns; a one-cell row is a note under the previous row."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(headers[i])] + [len(r[i]) for r in cells if len(r) > 1]) for i in range(len(headers))]
    out = []
    for row in [headers] + cells:
        out.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() if len(row) > 1 else "  " + row[0])
    return out


def _short(public_key: Any) -> str:
    return f"{public_key[:SHORT_KEY]}…" if isinstance(public_key, str) and len(public_key) > SHORT_KEY else str(public_key)


def _rtt(ms: Any) -> str:
    return "-" if ms is None else f"{ms:.1f} ms"


def _ago(seconds: Any) -> str:
    if seconds is None:
        return "never"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes}m" if hours else f"{minutes}m {secs}s"


def _bytes(count: Any) -> str:
    value = float(count or 0)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


# --- arguments and logging --------------------------------------------------------------------


OPTIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "config": ("--config", {"metavar": "FILE", "help": f"config.toml of the agent (default {DEFAULT_CONFIG})"}),
    "token": ("--token", {"metavar": "FILE", "help": f"API token file (default {DEFAULT_TOKEN_FILE}; clients fall "
                                                     f"back to {FALLBACK_TOKEN_FILE})"}),
    "api": ("--api", {"metavar": "HOST:PORT", "help": f"REST API TCP address (default ${LISTEN_ENV} or "
                                                      f"{DEFAULT_LISTEN}; empty: none)"}),
    "run_dir": ("--run-dir", {"metavar": "DIR", "help": f"directory of the agent's API socket {SOCKET_NAME} "
                                                        f"(default ${RUN_DIR_ENV} or {DEFAULT_RUN_DIR})"}),
    "log_level": ("--log-level", {"metavar": "LEVEL", "help": LOG_HELP}),
    "log_file": ("--log-file", {"metavar": "FILE", "help": "append the log to FILE instead of stderr"}),
}
RUN_OPTIONS = ("config", "token", "api", "run_dir", "log_level", "log_file")
CLIENT_OPTIONS = ("token", "api", "run_dir")
NETWORK_VERBS = (
    ("add", "join a network: fetch and check its config, then add a [[network]] with this URL"),
    ("remove", "leave a network and delete its [[network]] entry"),
    ("enable", "re-activate a disabled network"),
    ("disable", "leave a network but keep its entry (disabled = true)"),
)


class _VersionAction(argparse.Action):
    """``--version``/``-V``: what ``drasyl-agent version`` prints, then exit 0."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        print(version_text())
        parser.exit()


def _add_options(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    """The options ``names`` of :data:`OPTIONS`; SUPPRESS: one given before the subcommand
    is not reset by the subcommand's parser."""
    for name in names:
        flag, kwargs = OPTIONS[name]
        action = parser.add_argument(flag, default=argparse.SUPPRESS, **kwargs)
        if name == "log_level":
            action.completions = LOG_LEVELS  # type: ignore[attr-defined]  # read by docgen


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-V", "--version", action=_VersionAction, help="show the version and exit")
    _add_options(parser, RUN_OPTIONS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, what: str, description: str, options: Sequence[str]) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=what, description=description)
        _add_options(cmd, options)
        return cmd

    command("run", "run the agent in the foreground (systemd keeps it running)",
            "Run the agent in the foreground until SIGINT/SIGTERM; SIGHUP reloads super_peers and networks "
            "from --config. Needs root or CAP_NET_ADMIN.", RUN_OPTIONS)
    status = command("status", "show identity, super peers, networks and peers",
                     "Show the running agent's public key, super peers (transport, RTT), networks and one row "
                     "per peer (path, RTT, last packet, bytes).", CLIENT_OPTIONS)
    status.add_argument("--json", action="store_true", help="print the API's JSON instead of tables")
    command("version", "show the version (does not contact the agent)", "Show the version and exit.", ())
    for verb, what in NETWORK_VERBS:
        cmd = command(verb, what, what[0].upper() + what[1:] + ".", CLIENT_OPTIONS)
        if verb == "add":
            cmd.add_argument("url", metavar="URL", help="network config URL (https://, http:// or file://)")
            cmd.add_argument("--force", action="store_true",
                             help="save the entry even when the config cannot be fetched or used now")
        else:
            cmd.add_argument("url", metavar="NETWORK",
                             help="the network's config URL, the masked URL 'status' shows "
                                  "(https://user:***@host/x), or its name")
    completion = command("completion", "print a bash or zsh completion script",
                         f"Print a completion script: {PROG} completion bash > /etc/bash_completion.d/{PROG}",
                         ())
    completion.add_argument("shell", choices=("bash", "zsh"), help="the shell")
    command("manpage", "print the manual page (roff)",
            f"Print the manual page: {PROG} manpage > /usr/local/share/man/man8/{PROG}.8", ())
    ping = command(
        "ping", "ping a peer through the overlay: path (direct/relayed) and RTT per reply",
        "The agent sends ICMP echo requests to PEER through the overlay, as from its TUN "
                    "(no raw socket needed here), and prints one line per reply: the path it took "
                    "(direct to an endpoint, or relayed via a super peer) and the round-trip time; "
                    "a line when the path changed; a summary. Exit 0 when a reply came (with "
                    "--until-direct: over a direct path), 1 otherwise or when PEER cannot be pinged "
                    "(unknown, no policy allows it, this node not in its network).", CLIENT_OPTIONS)
    ping.add_argument("peer", metavar="PEER", help="hostname, overlay IP or public key (hex, or its first 8+ digits); an overlay "
                                                   "IPv6 address pings over IPv6")
    ping.add_argument("-c", dest="count", metavar="N", type=_bounded(int, 1, 1_000_000), default=None,
                      help=f"probes to send (default {DEFAULT_PINGS}; with --until-direct {UNTIL_DIRECT_PINGS})")
    ping.add_argument("--until-direct", action="store_true",
                      help="stop at the first reply over a direct path; exit 1 if none came within -c probes")
    ping.add_argument("-i", dest="interval", metavar="SECONDS", type=_bounded(float, 0.01, 3600), default=1.0,
                      help="seconds between probes (default 1)")
    ping.add_argument("-W", dest="timeout", metavar="SECONDS", type=_bounded(float, 0.01, MAX_TIMEOUT_S),
                      default=2.0, help=f"seconds to wait for each reply (default 2, at most {MAX_TIMEOUT_S:g})")
    netcheck = command(
        "netcheck", "check the super peers: UDP/TCP reachability, RTT, NAT mapping, IPv6",
        "The agent checks each super peer: UDP (its registration, a STUN round trip) and TCP "
        "(a timed connect to its tcpPort) reachability and RTT; the endpoints it advertises; this "
        "host's public address mapping as the super peers see it (STUN, answered by our drasyl-sp, "
        "not by drasyl-rs') and whether it differs per destination (a symmetric NAT); IPv6 (also "
        "whether the TUN carries it and how many peers take it); and what "
        "that means for direct paths. Takes up to ~3 s. Exit 0 when a super peer answered over UDP "
        "or TCP, 1 otherwise (the report is printed either way).", CLIENT_OPTIONS)
    netcheck.add_argument("--json", action="store_true",
                          help="print the API's JSON report (schema in the README) instead of text")
    return parser


def configure_log_levels(level: int) -> None:
    """drasyl's loggers at ``level``; the libraries' (pyroute2, aiohttp, asyncio) at WARNING or
    quieter, unless ``level`` is trace: their debug output would drown the agent's own."""
    logging.getLogger("drasyl").setLevel(max(level, logging.DEBUG))
    logging.getLogger().setLevel(level if level <= TRACE else max(level, logging.WARNING))


def _bounded(kind: Callable[[str], int | float], low: float, high: float) -> Callable[[str], int | float]:
    """An argparse type: ``kind`` between ``low`` and ``high``; a usage error otherwise."""
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is not between {low:g} and {high:g}")
        return value
    return parse


def _configure_logging(args: argparse.Namespace) -> None:
    if args.log_level is not None:
        level = log_level({"--log-level": args.log_level}, own="--log-level")
    else:
        level = log_level(os.environ, default=logging.INFO)
    try:
        handler: logging.Handler = (logging.FileHandler(args.log_file) if args.log_file
                                    else logging.StreamHandler(sys.stderr))
    except OSError as exc:
        raise AgentError(f"cannot open log file {args.log_file!r}: {exc.strerror}") from None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().handlers[:] = [handler]
    configure_log_levels(level)
    args.log_level = level


if __name__ == "__main__":
    sys.exit(main())
