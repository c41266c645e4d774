"""``drasyl-agent run``: the TUN device, the node and the networks put together (agent.md §0, §4, §7).

Start (§7 order, leftovers first): a crashed run's TUN device and hosts-file names are
removed, the :class:`~drasyl.node.Node` starts (``DRASYL_*`` variables parsed strictly), the
TUN device comes up with ``mtu`` from config.toml, the REST API listens (and, opt-in, the
Prometheus endpoint of :mod:`.metrics`, which reads :meth:`Agent.status`), and housekeeping
runs at once and then every 10 s: each enabled network's config is fetched (one aiohttp
session, made at the first http(s) fetch; 5 s timeout), parsed and turned into this node's
:class:`LocalState` in a work thread (only when its text changed; any exception is that
network's error), then :func:`~drasyl.agent.consent.decide` cuts what the networks ask for
down to what the local user allowed, given the host's own routes, the super peers' and config
servers' addresses and the names the host has; the policy tables (also built in the work
thread), the send handles and the host (addresses, routes, forwarding, hosts block) follow.
A TUN device deleted under the agent is created again (or the agent exits 1). Every 2 s a
watch compares each super peer's and member's state (:mod:`.explain`) with what it logged
last and logs each change once at info.

Data path, the product's hot loop: the TUN fd is a reader of the event loop; each wake-up
reads a burst of packets into the device's reused slots, checks each (IPv4, not drasyl's own
UDP, allowed by a policy towards one peer) and hands the burst to :meth:`Node.send_batch`
(one clock read, one GSO flush). Received batches come through ``on_receive`` and are
checked the other way (IPv4, not drasyl's, the sender is the peer the source address
belongs to) and written to the TUN; echo replies to ``drasyl-agent ping`` (:mod:`.ping`) are
taken off there instead. Drops are counted by reason (``status`` shows them),
never logged per packet. Where the C extension was built (:mod:`.fast`), it does this per-packet
work for established peers (IPv4, /32 policy entries, direct path, short id) and leaves every
other packet, in order, to the code here.

IPv6 takes a branch off the IPv4 path (one test per packet on it): the same checks with the
IPv6 tables, and an IPv6 packet goes only to a peer known to take IPv6 (:mod:`.ipv6`: learned
from announcements, so a drasyl-rs agent never gets one; else ``tx_ipv6_not_capable``).
Names are in the hosts file and answered by the embedded resolver (:mod:`.resolver`) on the
overlay addresses, registered with systemd-resolved for ``drasyl.network`` where it runs.

Deliberate differences from drasyl-rs:

- reconciliation computes the whole host state from every network's state and lets
  :class:`~drasyl.tun.Host` bring the kernel there, so the §4 table's outcomes hold without
  comparing against a stored "current" state: an address change re-applies routes, rules and
  names ([bug]: drasyl-rs compared against the torn-down state and lost them);
- ``disable`` and ``remove`` tear a network down without waiting for a successful fetch
  ([quirk] §10.6); a network whose config stops validating keeps its last good state
  (fail-static, as drasyl-rs) and shows the error in ``status``;
- a duplicate rule or an address that cannot be added is an error for that network or a
  retried problem, never a stop ([bug] §10.11); an unexpected exception in housekeeping is
  counted and logged at most every 10 s and the agent keeps running;
- SIGHUP reloads ``super_peers`` and the networks without touching the TUN or live flows;
  identity, ``mtu`` and ``[metrics]`` changes are logged as needing a restart; a broken file
  on reload is logged and the running configuration kept;
- SIGTERM/SIGINT remove routes, addresses, the hosts block and the device, then exit 0;
- the network ``name`` from the config is saved into config.toml whenever it differs,
  also the first time (drasyl-rs only saves a changed name);
- the overlay carries IPv6 too ([quirk] §10.1: drasyl-rs drops it), to peers that announced
  it (:mod:`.ipv6`), and names are also answered by an embedded resolver ([quirk] §10.7).
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import os
import signal
import socket
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Interface, IPv6Interface
from typing import TYPE_CHECKING, Any, Awaitable, Callable, TypeVar
from urllib.parse import urlsplit

from .. import eventloop
from ..crypto import session_keys
from ..errors import CryptoError, DrasylError
from ..identity import Identity
from ..net.faults import FaultLog
from ..node.api import Node, node_config_from_env, udp_from_env
from ..node.core import NodePeer
from ..urls import format_host_port
from ..tun import Forwarding, Host, HostState, TunDevice, cleanup_stale
from ..tun.device import DEFAULT_NAME
from ..tun.hosts import HostsFile
from ..tun.packet import ADDRESSES, PROTO_UDP, is_drasyl_control, is_drasyl_control6, is_ipv4, is_ipv6, src_dst6
from ..tun.routes import Route, underlay_routes, underlay_routes6
from .api import DEFAULT_RUN_DIR, ApiServer, TokenFile, config_status
from .config import AgentConfig, NetworkEntry, mask_url
from .consent import Decision, HostFacts, Request, decide
from .explain import NO_ANSWER, PeerPath, nat_status, peer_path, punch_result, super_peer_state
from .fast import FastPath
from .fetch import FetchError, OnDemandSession, fetch_config_text
from .ipv6 import Capabilities, announcement, announcement_flags
from .isolate import document, parse_toml
from .netcheck import run_netcheck
from .netconfig import NetworkConfig, NetworkConfigError, validate_network_config
from .ping import PROTO_ICMP, PROTO_ICMPV6, Pinger
from .policy import LocalState, PolicyTables, desired_state
from .resolver import Names

if TYPE_CHECKING:  # imported when metrics are on: prometheus_client costs megabytes of RSS
    from ..portmap import PortMapper
    from .metrics import AgentMetrics

log = logging.getLogger("drasyl.agent")

T = TypeVar("T")
HOUSEKEEPING_S = 10.0
#: How long the agent tries to bring back a TUN device that was deleted under it before it
#: exits non-zero (systemd then restarts it).
TUN_RECREATE_S = 10.0
#: An unexpected error's text in status and log is cut here (a config can carry megabytes).
MAX_ERROR_CHARS = 300
#: The interpreter's thread switch interval while the work thread is busy: the data path
#: waits up to this long for the GIL after each syscall (5 ms by default: under load, packets
#: queued for most of a second; bench/config_stall.py).
WORK_SWITCH_S = 0.00005
#: Send handles made per event-loop turn when new tables arrive (each is a key exchange).
HANDLES_PER_TURN = 64
#: Per-peer problems listed in the log at one change; the rest are counted.
MAX_LISTED = 10
#: How often super peer and peer states are compared with what was last logged.
WATCH_S = 2.0
#: A super peer silent for less than this (one HELLO interval) is not logged as silent yet.
NEWS_S = 5.0
#: Above this many peers, per-peer state changes are not logged (status still shows them).
MAX_WATCHED_PEERS = 1000
#: Drop reasons of the screening both directions share (neither IPv4 nor IPv6 — the name is
#: older than IPv6 support —, drasyl's own traffic).
TX_REASONS = ("tx_not_ipv4", "tx_drasyl_control")
RX_REASONS = ("rx_not_ipv4", "rx_drasyl_control")
_unpack_addresses = ADDRESSES.unpack_from
#: :func:`_addresses`' answers besides (src, dst) and None: an IPv6 packet, an announcement (:mod:`.ipv6`).
V6: tuple = ()
ANNOUNCE = (0,)
#: Variables drasyl-rs reads that have no meaning here (one queue, no worker threads).
IGNORED_ENV = ("DRASYL_UDP_SOCKETS", "DRASYL_RECV_BUF_CAP", "DRASYL_CHANNEL_CAP", "DRASYL_TUN_THREADS",
               "DRASYL_C2D_THREADS")


def run(options: Any) -> int:
    """Run the agent until SIGTERM/SIGINT; the exit code. Errors at start raise DrasylError."""
    return eventloop.run(Agent(options.agent_config, options.token, options.listen, options.run_dir).main())


@dataclass
class Membership:
    """What the agent knows about one network at run time (config.toml has the rest)."""

    config: NetworkConfig | None = None  # the last config that validated
    state: LocalState | None = None  # this node's part of it; None: not a member (or down)
    error: str | None = None  # the last fetch/validation error, None after a good fetch
    text: str | None = None  # the text ``config`` came from: the same text is not parsed again
    server: frozenset[IPv4Address] = frozenset()  # the config server's addresses (stay on the underlay)


class Agent:
    """One agent process: node, TUN, host adapter, API and the networks' state."""

    def __init__(self, config: AgentConfig, token_path: str, listen: tuple[str, int] | None,
                 run_dir: str = DEFAULT_RUN_DIR) -> None:
        self.config = config
        self._token_path = token_path
        self._listen = listen
        self._run_dir = run_dir
        self._forwarding = Forwarding(DEFAULT_NAME, run_dir)
        self.decision = Decision()
        self._decided: tuple[Any, ...] | None = None  # what ``decision`` was made from
        self._exit_code = 0
        self._recreating: asyncio.Task | None = None
        self._applying = asyncio.Lock()
        self.memberships: dict[str, Membership] = {}  # by normalised URL
        self.tables = PolicyTables()
        self.handles: dict[bytes, NodePeer] = {}
        self._handle_errors: dict[bytes, str] = {}  # peers the node refused a handle, and why
        self._told: dict[str, str] = {}  # state last logged, per super peer and peer
        self._punches: dict[str, float | None] = {}  # age of the last UNITE seen, per peer
        #: Packets the agent dropped, by reason (status ``drops``).
        self.drops: Counter[str] = Counter()
        self._faults = FaultLog(self.drops)
        #: ``drasyl-agent ping``: its echo requests and the replies it takes off the receive path.
        self.pinger = Pinger()
        #: Which peers take IPv6 (:mod:`.ipv6`), and where to announce to them: peer → (our IPv4, theirs).
        self.ipv6 = Capabilities()
        self._announce_to: dict[bytes, tuple[int, int]] = {}
        #: The hosts file's names, also answered by the embedded resolver (:mod:`.resolver`).
        self.names = Names()
        self._tx_batch: list[tuple[NodePeer, memoryview]] = []
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._reported: dict[str, tuple[str, ...]] = {}  # what was logged last, per topic
        self._tasks: set[asyncio.Task] = set()
        self._host_thread = ThreadPoolExecutor(1, thread_name_prefix="drasyl-host")
        #: Parsing configs and building tables: CPU work that must not stall the data path.
        self._work_thread = ThreadPoolExecutor(1, thread_name_prefix="drasyl-work")
        self._working = 0  # calls waiting for the work or the host thread
        self._building = 0  # calls waiting for the work thread (the collector is off meanwhile)
        self._switch_interval = sys.getswitchinterval()
        self.node: Node | None = None
        self.tun: TunDevice | None = None
        self.host: Host | None = None
        self.api: ApiServer | None = None
        self.metrics: AgentMetrics | None = None  # only with [metrics] listen
        self.port_mapper: PortMapper | None = None  # only with [nat] port_mapping (the default)
        self._mapping_task: asyncio.Task | None = None
        #: The C data path (:mod:`.fast`) when built and allowed; None: every packet in Python.
        self._fast: FastPath | None = None
        #: The TUN fd's reader: :meth:`_on_tun_readable`, or the C one (:attr:`FastPath.tun_readable`).
        self._tun_reader: Callable[[], None] = self._on_tun_readable

    # --- life cycle -------------------------------------------------------------------------

    async def main(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        try:
            await self._start()
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
            tasks = [asyncio.create_task(self._housekeeping()), asyncio.create_task(self._watch())]
            await self._stop.wait()
            log.info("Stopping")
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await self._shutdown()
        return self._exit_code

    async def _start(self) -> None:
        for name in IGNORED_ENV:
            if name in os.environ:
                log.info("%s is ignored by this agent (one TUN queue, no worker threads)", name)
        node_config = replace(node_config_from_env(), probing=self.config.nat.probing)
        metrics = self.config.metrics.with_env(os.environ)
        udp_port, udp_addrs = udp_from_env()
        await self._on_host(cleanup_stale, DEFAULT_NAME)
        self.node = await Node.start(self.config.identity, self.config.super_peers, udp_port=udp_port,
                                     udp_addrs=udp_addrs, config=node_config, on_receive=self._on_receive)
        self._fast = FastPath.start(self.node, self.pinger, self._send_from_tun, self._faults,
                                    self.config.arm_messages)
        if self._fast is not None:
            self._tun_reader = self._fast.tun_readable
        log.info("Node listening on UDP port %d (event loop: %s, data path: %s)", self.node.udp_port,
                 eventloop.name(), "native" if self._fast is not None else "python")
        if self.config.nat.port_mapping:
            self._start_port_mapping(self.node)
        await self._open_tun()
        # what a crashed run left: names, the forwarding table and its ip_forward (its device,
        # addresses and routes died with its process)
        for problem in await self._on_host(self.host.start):
            log.warning("Cleanup after a previous run: %s", problem)
        self.api = ApiServer(self, TokenFile(self._token_path), self._listen, self._run_dir)
        await self.api.start()  # logs where it listens
        await self.names.start()
        if metrics.listen is not None:
            from .metrics import AgentMetrics
            self.metrics = await AgentMetrics.start(self, metrics)
        gc.freeze()  # what start-up made (modules, the node) lives on: no collection scans it again

    def _start_port_mapping(self, node: Node) -> None:
        """Ask the router for a mapping of the node's UDP port in the background (it may take
        seconds, or never answer) and announce the mapped endpoint in our HELLOs while it lasts."""
        from ..portmap import PortMapper

        def on_change(mapping: Any) -> None:
            if mapping is None:
                log.info("Port mapping: none (%s)", self.port_mapper.last_error if self.port_mapper else "stopped")
                node.set_advertised([])
            else:
                log.info("Port mapping: %s maps %s to %s for %d s", mapping.protocol.upper(),
                         format_host_port(*mapping.internal), format_host_port(*mapping.external),
                         mapping.lifetime_s)
                node.set_advertised([mapping.external])

        self.port_mapper = PortMapper(node.udp_port, protocols=self.config.nat.port_mapping, on_change=on_change)
        self._mapping_task = asyncio.get_running_loop().create_task(self.port_mapper.start())

    async def _open_tun(self) -> None:
        tun = await self._on_host(TunDevice, DEFAULT_NAME, self.config.mtu)
        self.host = Host(tun.index, forwarding=self._forwarding)
        self.tun = tun
        if self._fast is not None:
            self._fast.set_tun(tun)
        asyncio.get_running_loop().add_reader(tun.fileno(), self._tun_reader)
        log.info("TUN device %s up, MTU %d", tun.name, tun.mtu)

    async def _close_tun(self) -> None:
        """Stop reading and writing first, then close: no packet goes to a closed (reused) fd."""
        tun, self.tun = self.tun, None
        if self._fast is not None:
            self._fast.set_tun(None)
        if tun is not None:
            asyncio.get_running_loop().remove_reader(tun.fileno())
            await self._on_host(tun.close)

    async def _shutdown(self) -> None:
        if self.port_mapper is not None:  # deletes the router's mapping (bounded: 3 s)
            if self._mapping_task is not None and not self._mapping_task.done():
                self._mapping_task.cancel()
            await asyncio.gather(self._mapping_task, return_exceptions=True)
            await self.port_mapper.stop()
        if self.metrics is not None:
            await self.metrics.close()
        if self.api is not None:
            await self.api.close()
        await self.names.close()
        if self.tun is not None:
            asyncio.get_running_loop().remove_reader(self.tun.fileno())
        if self._recreating is not None:
            self._recreating.cancel()
            await asyncio.gather(self._recreating, return_exceptions=True)
        if self._fast is not None:
            self._fast.close()
        if self.node is not None:  # before the TUN: nothing received is written after it closed
            await self.node.close()
        if self.host is not None:
            for problem in await self._on_host(self.host.close):
                log.warning("Cleanup: %s", problem)
        await self._close_tun()
        self._host_thread.shutdown()
        self._work_thread.shutdown(cancel_futures=True)
        log.info("Stopped; routes, addresses, names, forwarding and the TUN device removed")

    async def _on_work(self, func: Callable[..., T], *args: Any) -> T:
        """Run CPU work (validating a config, building tables) off the event loop, without the
        cyclic garbage collector meanwhile: the work makes hundreds of thousands of objects,
        and a full collection over them holds the GIL, so the data path, for ~0.1 s
        (bench/config_stall.py). Afterwards they are frozen (``gc.freeze``: left out of every
        later collection; they live as long as the tables, and reference counting still frees
        them), then collection resumes."""
        if not self._building:
            gc.disable()
        self._building += 1
        try:
            return await self._in_thread(self._work_thread, func, *args)
        finally:
            self._building -= 1
            if not self._building:
                gc.freeze()
                gc.enable()

    async def _in_thread(self, thread: ThreadPoolExecutor, func: Callable[..., T], *args: Any) -> T:
        """``func`` in ``thread``, with a short GIL switch interval while any thread works
        (:data:`WORK_SWITCH_S`): the data path then waits less for the GIL after each syscall."""
        if not self._working:
            sys.setswitchinterval(WORK_SWITCH_S)
        self._working += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(thread, func, *args)
        finally:
            self._working -= 1
            if not self._working:
                sys.setswitchinterval(self._switch_interval)

    def _tun_detached(self) -> None:
        """The device was deleted under us: stop reading at once (its fd stays readable and
        would spin), then bring it back with everything on it, or exit for systemd."""
        asyncio.get_running_loop().remove_reader(self.tun.fileno())
        if self._recreating is None:
            self._recreating = asyncio.get_running_loop().create_task(self._recreate_tun())

    async def _recreate_tun(self) -> None:
        log.warning("TUN device %s disappeared; creating it again", DEFAULT_NAME)
        deadline = asyncio.get_running_loop().time() + TUN_RECREATE_S
        try:
            await self._close_tun()
            while True:
                try:
                    await self._open_tun()
                    break
                except DrasylError as exc:
                    if asyncio.get_running_loop().time() > deadline:
                        log.error("Cannot create TUN device %s again (%s); exiting", DEFAULT_NAME, exc)
                        self._exit_code = 1
                        self._stop.set()
                        return
                    await asyncio.sleep(1.0)  # retry pacing, not synchronisation
            self._decided = None  # addresses, routes and names are gone with the old device
            await self.apply()
            log.info("TUN device %s is back with its addresses, routes and names", DEFAULT_NAME)
        except Exception:
            self._faults.report("recreating the TUN device")
        finally:
            self._recreating = None

    def _on_host(self, func: Callable[..., T], *args: Any) -> Awaitable[T]:
        """Run a netlink/host call in the host thread: pyroute2's synchronous API runs an event
        loop of its own, which it cannot inside ours; one thread keeps the calls in order."""
        return self._in_thread(self._host_thread, func, *args)

    def _on_sighup(self) -> None:
        task = asyncio.get_running_loop().create_task(self._reload_guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reload_guarded(self) -> None:
        try:
            await self.reload()
        except Exception:  # a bug in a reload must not stop the agent
            self._faults.report("reloading the configuration")

    # --- data path --------------------------------------------------------------------------

    def _on_tun_readable(self) -> None:
        """The TUN fd's reader on the Python data path: read a burst (the C one reads in C)."""
        try:
            n = self.tun.read_batch()
        except Exception:  # a bug must not stop the data path nor log per packet
            self._faults.report("reading packets from the TUN")
            return
        self._send_from_tun(n)

    def _send_from_tun(self, n: int) -> None:
        """The burst in ``tun.slots[:n]``: check each packet, send all allowed ones in one batch."""
        batch = self._tx_batch
        try:
            tun = self.tun
            if not n:
                if tun.detached:
                    self._tun_detached()
                return
            slots, lengths = tun.slots, tun.lengths
            egress, handles, drops = self.tables.egress, self.handles, self.drops
            for i in range(n):
                pkt = slots[i][:lengths[i]]
                addresses = _addresses(pkt, drops, TX_REASONS)
                if not addresses:  # None or V6
                    if addresses is None or (handle := self._egress6(pkt)) is None:
                        continue
                else:
                    handle = handles.get(egress(*addresses))
                    if handle is None:
                        drops["tx_policy_denied"] += 1
                        continue
                batch.append((handle, pkt))
            if batch:
                self.node.send_batch(batch)
        except Exception:  # a bug must not stop the data path nor log per packet
            self._faults.report("sending packets from the TUN")
        finally:
            batch.clear()

    def _egress6(self, pkt) -> NodePeer | None:
        """The handle for an IPv6 packet from the TUN, or None (counted): not drasyl's own, not
        link-local or multicast (the kernel's own chatter), allowed, and the peer takes IPv6."""
        drops = self.drops
        if pkt[6] == PROTO_UDP and is_drasyl_control6(pkt):
            drops["tx_drasyl_control"] += 1
            return None
        src, dst = src_dst6(pkt)
        if dst >> 120 == 0xFF or src >> 118 == 0x3FA or dst >> 118 == 0x3FA:  # ff00::/8, fe80::/10
            drops["tx_ipv6_link_local"] += 1
            return None
        pk = self.tables.egress6(src, dst)
        handle = self.handles.get(pk) if pk is not None else None
        if handle is None:
            drops["tx_policy_denied"] += 1
            return None
        if pk not in self.ipv6.capable:
            drops["tx_ipv6_not_capable"] += 1
            return None
        return handle

    def _receive_other(self, sender: bytes, payload, kind: tuple) -> None:
        """A received IPv6 packet or IPv6 announcement (``kind``), checked like IPv4."""
        tables, drops = self.tables, self.drops
        if kind is V6:
            if payload[6] == PROTO_UDP and is_drasyl_control6(payload):
                drops["rx_drasyl_control"] += 1
                return
            if not tables.ingress6_ok(sender, *src_dst6(payload)):
                drops["rx_policy_denied"] += 1
                return
            if sender not in self.ipv6.capable and self.ipv6.learned(sender):
                log.info("Peer %s… takes IPv6", sender.hex()[:12])
            if payload[6] == PROTO_ICMPV6 and self.pinger.take_reply6(payload):  # drasyl-agent ping
                return
            self.tun.write(payload)
            return
        src, dst = _unpack_addresses(payload, 12)
        if not tables.ingress_ok(sender, src, dst):
            drops["rx_policy_denied"] += 1
            return
        self.ipv6.received += 1
        if sender not in tables.peers6 or not self.tun.ipv6:
            return
        if self.ipv6.learned(sender):
            log.info("Peer %s… takes IPv6", sender.hex()[:12])
        flags = announcement_flags(payload)
        if flags and self.ipv6.should_answer(sender, asyncio.get_running_loop().time()):
            asyncio.get_running_loop().call_soon(self._announce, [sender], False)

    def _announce(self, peers: list[bytes], ask: bool = True) -> None:
        """Send an IPv6 announcement (:mod:`.ipv6`) to each of ``peers`` we know a path for."""
        if self.tun is None or not self.tun.ipv6:
            return
        batch = []
        for pk in peers:
            addresses, handle = self._announce_to.get(pk), self.handles.get(pk)
            if addresses is not None and handle is not None:
                batch.append((handle, announcement(*addresses, ask)))
        if batch:
            self.ipv6.sent += len(batch)
            self.node.send_batch(batch)

    def _on_receive(self, batch: list[tuple[bytes, bytes | bytearray]]) -> None:
        """Received APPs: each must fit the MTU, be IPv4, not drasyl's own, and come from the
        peer its source address belongs to."""
        tun = self.tun
        if tun is None:  # being recreated, or closed at shutdown
            self.drops["rx_no_tun"] += len(batch)
            return
        try:
            ingress_ok, drops, write, mtu = self.tables.ingress_ok, self.drops, tun.write, tun.mtu
            pong = self.pinger.take_reply
            for sender, payload in batch:
                if len(payload) > mtu:
                    drops["rx_oversize"] += 1
                    continue
                addresses = _addresses(payload, drops, RX_REASONS, True)
                if addresses is None:
                    continue
                if len(addresses) != 2:  # V6 or ANNOUNCE
                    self._receive_other(sender, payload, addresses)
                    continue
                if not ingress_ok(sender, *addresses):
                    drops["rx_policy_denied"] += 1
                    continue
                if payload[9] == PROTO_ICMP and pong(payload):  # a reply to drasyl-agent ping
                    continue
                write(payload)
        except Exception:  # a bug must not stop the node's receive path
            self._faults.report("writing received packets to the TUN")
        # A reply the kernel made while we wrote (a ping's, a TCP ACK) is in the TUN already:
        # sending it now saves the loop round trip of the hop (bench/README.md "Tunnel latency")
        self._tun_reader()

    # --- telling the user what changed ---------------------------------------------------------

    async def _watch(self) -> None:
        """Every :data:`WATCH_S`: log each super peer's and each member's state once per change."""
        while True:
            await asyncio.sleep(WATCH_S)  # a period, not synchronisation
            try:
                members = sum(len(m.config.nodes) for k in self.decision.states
                              if (m := self.memberships.get(k)) is not None and m.config is not None)
                known = len(self.node.core.peers)  # also peers released but not yet expired
                self._tell_changes(self.status(peers=max(members, known) <= MAX_WATCHED_PEERS))
                self._announce(self.ipv6.due(asyncio.get_running_loop().time()))
            except Exception:  # a bug must not stop the agent
                self._faults.report("watching peer states")

    def _tell_changes(self, status: dict[str, Any]) -> None:
        for sp in status["super_peers"]:
            state = sp["state"]
            if state == NO_ANSWER and (sp["unanswered_s"] or 0) < NEWS_S:
                continue  # one HELLO interval without answer is not news yet
            self._tell(f"sp {sp['public_key']}", state,
                       f"Super peer {sp['public_key'][:12]}… ({sp['address']}): {sp['reason']}")
        peers = status["peers"]
        present = {f"peer {p['public_key']}" for p in peers}
        for topic in [t for t in self._told if t.startswith("peer ") and t not in present]:
            del self._told[topic]  # gone (left the networks): told afresh if it comes back
        self._punches = {pk: age for pk, age in self._punches.items() if f"peer {pk}" in present}
        for p in peers:
            name = f"{p['hostname'] or p['public_key'][:12] + '…'} ({p['ip'] or p['public_key'][:12] + '…'})"
            state = f"{p['path']} {p['cause']}"
            if self._told.get(f"peer {p['public_key']}", state) != state:
                self.ipv6.again(bytes.fromhex(p["public_key"]))  # it came up (or moved): tell it about IPv6 now
            self._tell(f"peer {p['public_key']}", state, f"Peer {name}: {_describe_path(p)}")
            punch, last = p["last_punch_s"], self._punches.get(p["public_key"])
            if punch is not None and (last is None or punch < last):  # a new UNITE since the last look
                log.debug("Peer %s: a super peer sent a UNITE %.1f s ago: punching its endpoints (%s)",
                          name, punch, p["punch_result"])
            self._punches[p["public_key"]] = punch

    def _tell(self, topic: str, state: str, message: str) -> None:
        """Log ``message`` at info when ``state`` differs from the last one told for ``topic``."""
        if self._told.get(topic) != state:
            self._told[topic] = state
            log.info("%s", message)

    # --- housekeeping -----------------------------------------------------------------------

    async def _housekeeping(self) -> None:
        session = OnDemandSession()
        try:
            while True:
                self._wake.clear()
                try:
                    await self.housekeep(session)
                except Exception:  # a bug must not stop the agent: count, log rate-limited
                    self._faults.report("housekeeping")
                try:
                    await asyncio.wait_for(self._wake.wait(), HOUSEKEEPING_S)
                except TimeoutError:
                    pass
        finally:
            await session.close()

    async def housekeep(self, session: OnDemandSession) -> None:
        """Fetch every enabled network's config (all at once: one slow server delays no other
        network), then bring tables and host to the result."""
        await asyncio.gather(*(self._refresh(entry, session) for entry in self.config.networks
                               if not entry.disabled))
        await self.apply()

    async def _refresh(self, entry: NetworkEntry, session: OnDemandSession) -> None:
        shown = mask_url(entry.config_url)
        member = self.memberships.get(entry.key)
        try:
            text = await fetch_config_text(entry.config_url, self.config.identity.public_key_hex, session)
            server = await _server_addresses(entry.config_url)
            if member is not None and member.text == text and member.error is None:
                member.server = server or member.server
                return  # unchanged: nothing to parse, nothing to log again
            cfg, state = await self._understand(text, shown)
        except (FetchError, NetworkConfigError) as exc:
            self._refresh_failed(entry, str(exc))
            return
        except Exception as exc:  # anything from parsing one config is that network's error, never the agent's
            self._refresh_failed(entry, f"network config {shown}: cannot be used: {type(exc).__name__}: "
                                        f"{str(exc)[:MAX_ERROR_CHARS]}")
            return
        current = self.config.network(entry.key)
        if current is None or current.disabled:  # removed or disabled while we fetched
            return
        member = self.memberships.setdefault(entry.key, Membership())
        member.config, member.state, member.error, member.text = cfg, state, None, text
        member.server = server or member.server
        self._report(f"error {entry.key}", [], logging.WARNING)
        self._report(f"warnings {entry.key}", [f"Network {shown}: {w}" for w in cfg.warnings], logging.WARNING)
        self._report(f"member {entry.key}", [] if state is not None else
                     [f"Network {shown}: this node ({self.config.identity.public_key_hex[:12]}…) is not a member"],
                     logging.WARNING)
        if cfg.name != current.name:
            try:
                self._edited(self.config.set_name(current.config_url, cfg.name))
            except DrasylError as exc:
                self._report(f"name {entry.key}", [f"Cannot save the name of network {shown}: {exc}"],
                             logging.WARNING)

    async def _understand(self, text: str, shown: str) -> tuple[NetworkConfig, LocalState | None]:
        """A config's text → (config, this node's state): TOML in a child process, the rest in
        the work thread; :class:`NetworkConfigError` when it does not validate."""
        pickled = await parse_toml(text, shown)
        return await self._on_work(_understand, pickled, shown, self.config.identity.public_key)

    def _refresh_failed(self, entry: NetworkEntry, error: str) -> None:
        current = self.config.network(entry.key)
        if current is None or current.disabled:
            return
        member = self.memberships.setdefault(entry.key, Membership())
        member.error = error
        kept = " (keeping the last good state)" if member.state is not None else ""
        self._report(f"error {entry.key}", [f"{error}{kept}"], logging.WARNING)

    async def apply(self) -> None:
        """Decide what the enabled networks may change (:mod:`.consent`), then bring policy
        tables, send handles and the host there; one apply at a time (housekeeping, the API
        and SIGHUP all call it, and it waits for threads in between)."""
        async with self._applying:
            await self._apply()

    async def _apply(self) -> None:
        enabled = [n for n in self.config.networks if not n.disabled]
        keys = {n.key for n in enabled}
        for key in list(self.memberships):
            if key not in keys:  # removed or disabled: gone, and logged afresh if it comes back
                del self.memberships[key]
                for topic in ("error", "warnings", "member", "name", "refused"):
                    self._reported.pop(f"{topic} {key}", None)
        requests = tuple(Request(n.key, mask_url(n.config_url), n.consent, m.state, m.config, m.server)
                         for n in enabled if (m := self.memberships.get(n.key)) is not None
                         and m.state is not None and m.config is not None)
        if self.host is None:
            return
        routes, names, routes6 = await self._on_host(self._host_facts, self.host.routes.ifindex)
        facts = HostFacts(routes, self._super_peer_addresses(), names, routes6, self._super_peer_addresses(6))
        if (requests, facts) != self._decided:
            identity = self.config.identity if self.config.arm_messages else None
            self.decision, tables, keys = await self._on_work(_decide, requests, facts, identity,
                                                              frozenset(self.handles))
            self._decided = (requests, facts)
            await self._adopt_tables(tables, keys)
            for req in requests:
                self._report(f"refused {req.key}", [f"Network {req.shown}: {line}"
                                                    for line in self.decision.refused.get(req.key, ())],
                             logging.WARNING)
        states = self.decision.states
        ipv6 = self.tun is not None and self.tun.ipv6
        host_state = HostState(
            addresses=frozenset(IPv4Interface((s.ip, s.subnet.prefixlen)) for s in states.values())
            | frozenset(IPv6Interface((s.ip6, s.subnet6.prefixlen)) for s in states.values()
                        if ipv6 and s.ip6 is not None),
            routes=frozenset(Route(r.dest, r.gw) for s in states.values() for r in s.routes)
            | frozenset(Route(r.dest, r.gw) for s in states.values() if ipv6 for r in s.routes6),
            served=frozenset(d for s in states.values() for d in s.served)
            | frozenset(d for s in states.values() if ipv6 for d in s.served6),
            names=frozenset(name for s in states.values() for name in s.hostnames)
            | frozenset(name for s in states.values() if ipv6 for name in s.hostnames6),
        )
        self._report("host", await self._on_host(self.host.apply, host_state), logging.WARNING)
        self._report("names", await self.names.apply(host_state.names, [a.ip for a in host_state.addresses],
                                                     DEFAULT_NAME), logging.WARNING)

    @staticmethod
    def _host_facts(ifindex: int) -> tuple[tuple, frozenset[str], tuple]:
        """(the host's own routes, the names it has without us, its own IPv6 routes): in the host thread."""
        hostname = socket.gethostname().lower()
        return (underlay_routes(ifindex), HostsFile().foreign_names() | {hostname, hostname.partition(".")[0]},
                underlay_routes6(ifindex))

    def _super_peer_addresses(self, version: int = 4) -> frozenset[Any]:
        found = set()
        for sp in self.node.core.super_peers.values():
            for host, _port in sp.addresses:
                try:
                    address = ipaddress.ip_address(host)
                except ValueError:
                    continue
                if address.version == version:
                    found.add(address)
        return frozenset(found)

    async def _adopt_tables(self, tables: PolicyTables, keys: dict[bytes, tuple[bytes, bytes]]) -> None:
        """Send handles for the tables' new peers, then the swap. Their key exchanges (~0.1 ms
        each) were made in the work thread (``keys``); the handles are made
        :data:`HANDLES_PER_TURN` at a time with the loop free in between, so that 10 000 new
        peers do not stall the data path."""
        node = self.node
        refused = []
        self._handle_errors = {}
        for i, pk in enumerate(sorted(tables.peers - self.handles.keys()), 1):
            try:
                self.handles[pk] = node.handle(pk, keys.get(pk))
            except DrasylError as exc:  # e.g. a super peer's key as a node, a full peer table
                self._handle_errors[pk] = f"the node refused it: {exc}"
                refused.append(f"Cannot send to peer {pk.hex()}: {exc}")
            if i % HANDLES_PER_TURN == 0:
                await asyncio.sleep(0)
        if len(refused) > MAX_LISTED:
            refused[MAX_LISTED:] = [f"… and {len(refused) - MAX_LISTED} more peers (not listed)"]
        self._report("handles", refused, logging.WARNING)
        # the new tables only name peers that have handles now; swap before releasing the rest
        self.tables = tables
        self._announce_to = self._announce_addresses(tables)
        self.ipv6.keep(tables.peers6)
        self._announce(self.ipv6.due(asyncio.get_running_loop().time()))
        for pk in self.handles.keys() - tables.peers:
            node.release(self.handles.pop(pk))
        if self._fast is not None:  # before the next packet: nothing awaited since the swap
            self._fast.set_tables(tables, self.handles)
        self._report("conflicts", list(tables.conflicts), logging.WARNING)
        log.info("Policy tables: %d network(s), %d peer(s)", len(self.decision.states), len(tables.peers))

    def _announce_addresses(self, tables: PolicyTables) -> dict[bytes, tuple[int, int]]:
        """Per IPv6 peer, our IPv4 address and its own in the first network where we may talk:
        where an announcement passes the peer's IPv4 anti-spoofing check."""
        out: dict[bytes, tuple[int, int]] = {}
        for key, state in self.decision.states.items():
            member = self.memberships.get(key)
            if member is None or member.config is None or state.ip6 is None:
                continue
            for rule in state.access_rules6:
                if rule.allow and rule.direction == "OUT" and rule.pk in tables.peers6 and rule.pk not in out:
                    node = member.config.node(rule.pk)
                    if node is not None:
                        out[rule.pk] = (int(state.ip), int(node.ip))
        return out

    def _report(self, topic: str, messages: list[str], level: int) -> None:
        """Log ``messages`` only when they differ from what was logged last for ``topic``."""
        new = tuple(messages)
        if self._reported.get(topic, ()) == new:
            return
        self._reported[topic] = new
        for message in new:
            log.log(level, "%s", message)

    # --- SIGHUP -----------------------------------------------------------------------------

    async def reload(self) -> None:
        """Re-read config.toml: super peers and networks take effect, the TUN stays."""
        log.info("SIGHUP: reloading %s", self.config.path)
        try:
            new, changes = self.config.reload()
        except DrasylError as exc:
            log.error("Reload failed, keeping the running configuration: %s", exc)
            return
        for key in changes.restart_needed:
            log.warning("Reload: %s changed in %s; this needs a restart", key, self.config.path)
        if changes.super_peers:
            try:
                await self.node.set_super_peers(new.super_peers)
                log.info("Reload: super peers now %s", ", ".join(str(u) for u in new.super_peers))
            except DrasylError as exc:
                log.error("Reload: cannot switch super peers (%s); keeping the old ones", exc)
                new = replace(new, super_peers=self.config.super_peers)
        for entry in changes.added:
            log.info("Reload: network %s added", mask_url(entry.config_url))
        for entry in changes.removed:
            log.info("Reload: network %s removed", mask_url(entry.config_url))
        for entry in changes.changed:
            log.info("Reload: network %s %s", mask_url(entry.config_url), "disabled" if entry.disabled else "changed")
        if not changes:
            log.info("Reload: nothing changed")
        self.config = new
        await self.apply()  # removed and disabled networks go now
        self._wake.set()  # added and enabled ones are fetched now

    # --- AgentControl (REST API) ------------------------------------------------------------

    def _edited(self, new: AgentConfig) -> None:
        """Take the networks of a config we just rewrote; what only a reload or a restart
        applies (super peers, identity, mtu, metrics) stays as running, so the next SIGHUP sees it."""
        self.config = replace(new, super_peers=self.config.super_peers, identity=self.config.identity,
                              mtu=self.config.mtu, metrics=self.config.metrics)

    async def add(self, url: str, force: bool = False) -> str:
        """Fetch and validate the config first: a typo in the URL or a config that does not
        validate is the answer to ``add``, not a line in a log. ``force`` saves the entry
        anyway when the config cannot be used now (its server is down today)."""
        self.config.check_new(url)
        shown, me = mask_url(url), self.config.identity
        session = OnDemandSession()
        try:
            text = await fetch_config_text(url.strip(), me.public_key_hex, session)
            _, state = await self._understand(text, shown)
        except (FetchError, NetworkConfigError) as exc:
            if not force:
                raise
            found = f", but its config cannot be used yet (saved because of force): {exc}"
        else:
            found = (f"; this node is a member as {state.ip}" if state is not None
                     else f", but this node ({me.public_key_hex[:12]}…) is not listed in it")
        finally:
            await session.close()
        self._edited(self.config.add_network(url))
        self._wake.set()
        return found

    async def remove(self, url: str) -> None:
        self._edited(self.config.remove_network(url))
        await self.apply()

    def enable(self, url: str) -> None:
        self._set_disabled(url, False)
        self._wake.set()

    async def disable(self, url: str) -> None:
        self._set_disabled(url, True)
        await self.apply()

    def _set_disabled(self, url: str, disabled: bool) -> None:
        entry = self.config.find_network(url)
        if entry.disabled != disabled:
            self._edited(self.config.set_disabled(entry.config_url, disabled))

    def _route_rows(self) -> list[dict[str, Any]]:
        """The kernel routes the agent manages, each with its network and state (Applied,
        Pending: the gateway is not reachable yet, Removing)."""
        kernel = dict(self.host.routes.states) if self.host is not None else {}
        rows = []
        for key, state in self.decision.states.items():
            member = self.memberships.get(key)
            network = (member.config.name if member and member.config else None) or mask_url(key)
            for route in state.routes + state.routes6:
                applied = kernel.get(Route(route.dest, route.gw))
                rows.append({"dest": str(route.dest), "gateway": str(route.gw), "network": network,
                             "state": applied.value if applied is not None else "Pending"})
        return rows

    def _member_rows(self, node_rows: dict[bytes, Any], relay: str, relay_registered: bool):
        """One row per member of every applied network (the first network naming a peer
        gives its name), and per other peer in the node's table; each with how it is reached."""
        mine = self.config.identity.public_key
        seen: set[bytes] = set()
        for key in self.decision.states:
            member = self.memberships.get(key)
            if member is None or member.config is None:
                continue
            shown = member.config.name or mask_url(key)
            for n in member.config.nodes:
                if n.pk == mine or n.pk in seen:
                    continue
                seen.add(n.pk)
                row = node_rows.get(n.pk)
                how = peer_path(row, n.pk in self.tables.peers, relay, relay_registered, self._handle_errors.get(n.pk))
                yield _peer_status(n.pk, n, shown, row, how, self._ipv6_of(n.pk))
        for pk, row in node_rows.items():
            if pk not in seen and row.last_rx_s is not None:  # it sent to us without being in our networks
                yield _peer_status(pk, None, None, row, peer_path(row, True, relay, relay_registered))

    async def ping(self, peer: str, timeout: float) -> dict[str, Any]:
        return await self.pinger.ping(self, peer, timeout)

    async def netcheck(self) -> dict[str, Any]:
        return await run_netcheck(self)

    def status(self, peers: bool = True) -> dict[str, Any]:
        """``GET /status`` (schema in :mod:`.api`); ``peers`` false leaves the peer rows out,
        for the watch of a large network (each row costs)."""
        status = config_status(self.config)
        node = self.node
        rows = node.peers(nodes=peers)
        sp_rows = {r.public_key.hex(): r for r in rows if r.role == "super_peer"}
        default = node.core.default.public_key.hex()
        for sp in status["super_peers"]:
            row = sp_rows.get(sp["public_key"])
            if row is not None:
                sp["transport"] = row.path if row.path in ("udp", "tcp") else None
                sp["rtt_ms"] = row.rtt_ms
            sp["state"], sp["reason"] = super_peer_state(row)
            sp["unanswered_s"] = row.silent_s if row is not None else None
            sp["default"] = sp["public_key"] == default
        relay_registered = any(sp["default"] and sp["transport"] for sp in status["super_peers"])
        for net, entry in zip(status["networks"], self.config.networks):
            member = self.memberships.get(entry.key)
            if member is None or entry.disabled:
                continue
            net["error"] = member.error
            net["refused"] = list(self.decision.refused.get(entry.key, ()))
            if member.config is not None:
                net["name"] = member.config.name
                net["warnings"] = list(member.config.warnings)
            if member.state is not None and entry.key not in self.decision.states and net["refused"]:
                net["state"], net["subnet"], net["ip"] = "refused", str(member.state.subnet), str(member.state.ip)
            elif member.state is not None:
                net["state"], net["subnet"], net["ip"] = "active", str(member.state.subnet), str(member.state.ip)
                applied = self.decision.states.get(entry.key)
                if applied is not None and applied.ip6 is not None and self.tun is not None and self.tun.ipv6:
                    net["subnet6"], net["ip6"] = str(applied.subnet6), str(applied.ip6)
            elif member.config is not None:
                net["state"] = "not a member"
            elif member.error is not None:
                net["state"] = "error"
        status["conflicts"] = list(self.decision.conflicts) + list(self.tables.conflicts)
        status["nat"] = nat_status(node.core)
        status["nat"]["port_mapping"] = self.port_mapper.status() if self.port_mapper is not None else None
        status["routes"] = self._route_rows()
        node_rows = {r.public_key: r for r in rows if r.role == "node"}
        status["peers"] = sorted(self._member_rows(node_rows, default, relay_registered) if peers else (),
                                 key=lambda p: (p["hostname"] is None, p["hostname"] or "", p["public_key"]))
        drops = Counter(self.drops)
        if self.tun is not None:
            drops.update(self.tun.drops)
        drops.update({k: v for k, v in node.stats().items() if k != "relay_queued"})
        status["drops"] = dict(sorted(drops.items()))
        status["ipv6"] = {"device": self.tun is not None and self.tun.ipv6,
                          "announcements_sent": self.ipv6.sent, "announcements_received": self.ipv6.received}
        status["names"] = self.names.status()
        status["native"] = self._fast.stats() if self._fast is not None else None
        return status

    def _ipv6_of(self, pk: bytes) -> str:
        """A member's IPv6 state: ``yes`` (it takes IPv6), ``not yet`` (no announcement from it:
        an older or drasyl-rs agent, or not up), ``no`` (no IPv6 rule towards it)."""
        if pk not in self.tables.peers6:
            return "no"
        return "yes" if pk in self.ipv6.capable else "not yet"


def _describe_path(p: dict[str, Any]) -> str:
    """A status peer row in words, for the log."""
    if p["path"] == "direct":
        rtt = "" if p["rtt_ms"] is None else f", RTT {p['rtt_ms']:.1f} ms"
        return f"direct to {p['endpoint']}{rtt}"
    if p["path"] in ("relayed", "tcp"):
        how = "relayed" if p["path"] == "relayed" else "over TCP"
        punch = f"; last hole punch {p['last_punch_s']:.0f} s ago: {p['punch_result']}" if p["last_punch_s"] else ""
        return f"{how} via super peer {p['via'][:12]}…{punch}"
    return f"unreachable: {p['reason']}"


def _peer_status(pk: bytes, node: Any, network: str | None, row: Any, how: PeerPath,
                 ipv6: str = "no") -> dict[str, Any]:
    """One ``status`` peer row (schema in :mod:`drasyl.agent.api`)."""
    return {"public_key": pk.hex(), "hostname": node.hostname if node else None,
            "ip": str(node.ip) if node else None, "network": network,
            "ip6": str(node.ip6) if node is not None and node.ip6 is not None else None, "ipv6": ipv6,
            "path": how.state, "via": how.via, "cause": how.cause, "reason": how.reason,
            "endpoint": format_host_port(*row.remote[:2]) if row is not None and row.remote else None,
            "rtt_ms": row.rtt_ms if row is not None else None,
            "last_rx_s": row.last_rx_s if row is not None else None,
            "rx_bytes": row.bytes_in if row is not None else 0, "tx_bytes": row.bytes_out if row is not None else 0,
            "last_punch_s": row.unite_s if row is not None else None, "punch_result": punch_result(row),
            "found_by": row.via if row is not None else None, "probing": row.probing if row is not None else None}


def _understand(pickled: bytes, source: str, my_pk: bytes) -> tuple[NetworkConfig, LocalState | None]:
    """Validate a parsed config and derive this node's state: in the work thread."""
    cfg = validate_network_config(document(pickled, source), source)
    return cfg, desired_state(cfg, my_pk)


def _decide(requests: tuple[Request, ...], facts: HostFacts, identity: Identity | None,
            known: frozenset[bytes]) -> tuple[Decision, PolicyTables, dict[bytes, tuple[bytes, bytes]]]:
    """What the host allows, the tables for it (first network first) and the session keys of
    peers new to the tables (``identity`` None: unarmed, no keys): in the work thread, where
    libsodium runs without the GIL."""
    decision = decide(requests, facts)
    shown = {r.key: r.shown for r in requests}
    tables = PolicyTables({shown[key]: state for key, state in decision.states.items()})
    keys = {}
    for pk in tables.peers - known if identity is not None else ():
        try:
            keys[pk] = session_keys(identity, pk)
        except CryptoError:
            pass  # the handle reports it
    return decision, tables, keys


async def _server_addresses(url: str) -> frozenset[IPv4Address]:
    """The IPv4 addresses of an http(s) config server (protected: routes must not cover them)."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return frozenset()
    if not host or not url.lower().startswith(("http://", "https://")):
        return frozenset()
    try:
        address = ipaddress.ip_address(host)
        return frozenset({address}) if address.version == 4 else frozenset()
    except ValueError:
        pass
    try:
        async with asyncio.timeout(5.0):
            infos = await asyncio.get_running_loop().getaddrinfo(host, None, family=socket.AF_INET)
    except (OSError, TimeoutError):
        return frozenset()
    return frozenset(IPv4Address(info[4][0]) for info in infos)


def _addresses(pkt, drops: Counter[str], reasons: tuple[str, str], rx: bool = False) -> tuple[int, ...] | None:
    """(src, dst) of an IPv4 packet that is not drasyl's own traffic; :data:`V6` for an IPv6
    packet; with ``rx``, :data:`ANNOUNCE` for an IPv6 announcement; None, counted, otherwise."""
    if not is_ipv4(pkt):
        if is_ipv6(pkt):
            return V6
        drops[reasons[0]] += 1
        return None
    if pkt[9] == PROTO_UDP and is_drasyl_control(pkt):
        if rx and announcement_flags(pkt) is not None:
            return ANNOUNCE
        drops[reasons[1]] += 1
        return None
    return _unpack_addresses(pkt, 12)
