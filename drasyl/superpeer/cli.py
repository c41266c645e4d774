"""The ``drasyl-sp`` command: environment in, super peer running, drasyl-rs' console output out.

Start-up, as drasyl-sp: load (or generate) the identity, bind, print ``Super peer listening
on:`` and one URL per address to stdout, log ``Bound … server to …``, then print the peer table
every ``DRASYL_PEERS_PRINT_INTERVAL`` ms until SIGINT/SIGTERM. Differences: the
``Identity file … not found`` line is always printed and PoW progress is shown on stderr;
URLs are printed after binding (so port 0 shows the real port); the peer table shows at most
1000 rows; logs go to stderr; SIGTERM is a clean shutdown with exit code 0 as well.

An identity file that group or others may read is warned about on stderr (one line) at
start; drasyl-rs does not check.

Exit codes: 0 after a signal, 1 for identity or bind errors (and, with ``DRASYL_WORKERS`` > 1,
when a worker dies: :mod:`.workers`), 2 for usage or configuration errors; never a traceback
for those. This module formats and orchestrates; sockets are
:mod:`.server`'s business and protocol rules the core's.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import itertools
import logging
import os
import signal
import sys
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from typing import Callable, Collection, Sequence

from .. import eventloop, native
from ..clock import monotonic_us
from ..errors import ConfigError, IdentityError
from ..identity import Identity, load_or_generate, mode_warning
from ..messages import decode_endpoints
from ..net.interfaces import local_addresses
from ..progress import PowProgress
from ..transmit import proto_name
from ..urls import format_host_port
from .config import PREFIX, VARIABLES, DaemonConfig
from .core import Peer
from .server import FAST_PATH, BindError, Listener, SuperPeerServer

log = logging.getLogger("drasyl.superpeer")

PROG = "drasyl-sp"
PEER_TABLE_MAX_ROWS = 1000
LOOPBACK = {4: "127.0.0.1", 6: "::1"}
TRACING_LEVEL_NAMES = {"WARNING": "WARN", "CRITICAL": "ERROR"}


def main(argv: Sequence[str] | None = None) -> int:
    _parser().parse_args(argv)
    try:
        config = DaemonConfig.from_env(os.environ)
        eventloop.choice()
        native.load(FAST_PATH)  # a bad DRASYL_NATIVE, or 'on' without the C build, fails here
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    _configure_logging(config.log_level)
    progress = PowProgress(sys.stderr)
    try:
        identity = load_or_generate(config.identity_file, config.min_pow_difficulty,
                                    on_generate=_announce_generation, progress=progress)
    except IdentityError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C during PoW search; the file was not written
        print("Shutdown initiated via Ctrl-C.", flush=True)
        return 130
    finally:
        progress.finish()
    warning = mode_warning(config.identity_file)
    if warning is not None:
        print(f"{PROG}: warning: {warning}", file=sys.stderr, flush=True)
    if config.workers > 1:
        from .workers import supervise  # forks: only then

        return supervise(identity, config)
    return eventloop.run(serve(identity, config))


async def serve(identity: Identity, config: DaemonConfig, server: SuperPeerServer | None = None,
                on_bound: Callable[[list[Listener]], None] | None = None) -> int:
    """Run the super peer until SIGINT or SIGTERM.

    A worker process (:mod:`.workers`) brings its own ``server`` and ``on_bound``, which reports
    the listeners to the parent instead of printing them; the parent prints the start-up and
    shutdown lines for all workers.
    """
    loop = asyncio.get_running_loop()
    stopped: asyncio.Future[str] = loop.create_future()
    for signum, how in ((signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM")):
        loop.add_signal_handler(signum, lambda how=how: stopped.done() or stopped.set_result(how))
    if server is None:
        server = SuperPeerServer(identity, config)
    try:
        await server.start()
    except BindError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    if on_bound is None:
        announce_listeners(server.listeners, identity, config.network_id)
    else:
        on_bound(server.listeners)
    tables = None
    if config.peers_print_interval_ms:
        # a worker's first table waits one interval: the parent prints the start-up lines first
        tables = asyncio.create_task(_print_peer_tables(server, config.peers_print_interval_ms / 1000,
                                                        wait_first=on_bound is not None))
    how = await stopped
    if on_bound is None:
        print(f"Shutdown initiated via {how}.", flush=True)
    if tables is not None:
        tables.cancel()
    await server.close()
    return 0


def announce_listeners(listeners: Sequence[Listener], identity: Identity, network_id: int) -> None:
    """``Super peer listening on:`` and the URLs to stdout, ``Bound … server to …`` logs."""
    _print_listening(listeners, identity, network_id)
    for listener in listeners:
        log.info("Bound %s server to %s", listener.name, listener.address)


# --- console output ---------------------------------------------------------------------------


def listening_urls(
    listeners: Sequence[Listener], public_key_hex: str, network_id: int, addresses: Sequence[str]
) -> list[str]:
    """The ``  udp://…`` lines (spec §8.2): UDP4 first, then UDP6; each line once.

    A specific listen IP gives that IP. ``0.0.0.0`` gives every usable local IPv4 address,
    ``[::]`` every usable IPv6 address and, when it is dual-stack, every IPv4 address too (an
    IPv6-only socket does not serve those; drasyl-rs lists them anyway). A wildcard without
    any usable address gives the loopback address, so each listener has at least one line.
    """
    tcp_ports = {listener.name: listener.address.port for listener in listeners}
    tcp_port = tcp_ports.get("TCP6", tcp_ports.get("TCP4"))
    query = f"?publicKey={public_key_hex}&networkId={network_id}"
    if tcp_port is not None:
        query += f"&tcpPort={tcp_port}"
    lines: list[str] = []
    for listener in (x for name in ("UDP4", "UDP6") for x in listeners if x.name == name):
        host, port = listener.address
        ip = ipaddress.ip_address(host.split("%", 1)[0])
        if ip.is_unspecified:
            versions = (6, 4) if ip.version == 6 and listener.dual_stack else (ip.version,)
            hosts = [a for a in addresses if ipaddress.ip_address(a).version in versions]
            hosts = hosts or [LOOPBACK[v] for v in versions]
        else:
            hosts = [host]
        for line in (f"  udp://{format_host_port(h, port)}{query}" for h in hosts):
            if line not in lines:
                lines.append(line)
    return lines


def peer_table(peers: Collection[Peer], now: int, max_rows: int = PEER_TABLE_MAX_ROWS) -> str:
    """drasyl-sp's peer table (spec §8.2 item 5); rows beyond ``max_rows`` are summarised."""
    lines = [f"{'Node':<64} {'PoW':<3} {'HelloRx':<7} HelloSrc"]
    for peer in itertools.islice(peers, max_rows):
        sources = [f"{proto_name(peer.proto)}://{format_host_port(peer.src[0], peer.src[1])}"]
        sources += [f"udp://{format_host_port(host, port)}" for host, port in decode_endpoints(peer.endpoints)]
        # Only peers whose PoW checked out enter our table, so the PoW column is always ok.
        lines.append(f"{peer.public_key.hex():<64} {'ok':<3} {(now - peer.hello_time) // 1000:<7} {' '.join(sources)}")
    if len(peers) > max_rows:
        lines.append(f"… {len(peers) - max_rows} more")
    lines.append(f"Total Peers: {len(peers)}")
    return "\n".join(lines) + "\n"


def _announce_generation(path: str) -> None:
    print(f"Identity file '{path}' not found. Generate new one...", flush=True)


def _print_listening(listeners: Sequence[Listener], identity: Identity, network_id: int) -> None:
    addresses = local_addresses() if any(_is_wildcard(x) for x in listeners) else []
    lines = listening_urls(listeners, identity.public_key_hex, network_id, addresses)
    print("Super peer listening on:", *lines, sep="\n", flush=True)


def _is_wildcard(listener: Listener) -> bool:
    return listener.name.startswith("UDP") and listener.address.host in ("0.0.0.0", "::")


async def _print_peer_tables(server: SuperPeerServer, interval_s: float, wait_first: bool = False) -> None:
    if wait_first:
        await asyncio.sleep(interval_s)
    while True:
        print(peer_table(server.core.peers.values(), monotonic_us()), flush=True)
        await asyncio.sleep(interval_s)


# --- arguments and logging --------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    rows = [f"  {PREFIX + name:<29} {default or '(empty)':<16} {meaning}" for name, default, meaning in VARIABLES]
    rows.append(f"  {'RUST_LOG':<29} {'(unset)':<16} tracing filter, e.g. 'info' or 'warn,drasyl_sp=debug';"
                " the most verbose level wins; unset: errors only")
    parser = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "drasyl super peer (byte-compatible with drasyl-rs' drasyl-sp): registers nodes,\n"
            "answers their HELLOs, relays APP messages between registered nodes and introduces\n"
            "them to each other (UNITE) for direct connections. Prints the URLs nodes put into\n"
            "their super_peers setting. Configured only through environment variables.\n"
            "Also answers STUN Binding requests on its UDP listeners (not in drasyl-rs; DRASYL_STUN),\n"
            "which drasyl-agent netcheck uses to see a node's public address mapping."
        ),
        epilog="environment variables (variable, default, meaning):\n" + "\n".join(rows)
        + "\n\nAn invalid value is an error (exit code 2); drasyl-rs would use the default.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    return parser


def _version() -> str:
    try:
        return version("drasyl")
    except PackageNotFoundError:
        return "unknown"


class _TracingFormatter(logging.Formatter):
    """``<RFC 3339 UTC time>  INFO drasyl.superpeer.server: message``, like tracing's layout."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        level = TRACING_LEVEL_NAMES.get(record.levelname, record.levelname)
        text = f"{stamp} {level:>5} {record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def _configure_logging(level: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_TracingFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)

