"""Interop with the real drasyl-rs binaries (:mod:`drasyl_rs`): their nodes through our super
peer, our node through theirs, mixed pairs, TCP fallback both ways, peer tables.

Lab (fresh for every test): one bridge, no NAT, so any two nodes can talk directly once a
super peer has introduced them::

    sp  198.51.100.10  2001:db8::10   a super peer: ours (python -m drasyl.superpeer) or drasyl-rs'
    a   198.51.100.20  2001:db8::20   a drasyl-rs example node or our node (tests/netns_node.py), id_2
    b   198.51.100.30  2001:db8::30   a drasyl-rs example node or our node, id_3

nftables in a node's namespace can drop its UDP to the super peer (TCP fallback) or to the
other node (so that a message each way must be relayed before the pair goes direct).

How a test sees the way a message came: our node (``tests/netns_node.py``) prints it for every
message (``relayed``, ``short``, ``tcp``, ...). For a drasyl-rs node, nftables counters in its
namespace count the APPs relayed to it by the super peer (long header, type APP, from the super
peer's address) and the short-header APPs from the other node (first four bytes not the
magic): short headers are only ever sent on a confirmed direct path. Our super peer's /metrics
count the bytes it relayed per pair, and both super peers print a peer table every second
(public key, PoW ``ok``/``nok``, protocol and source of the latest HELLO).

Every wait is bounded and every failure shows the output of all processes of the test.
"""

from __future__ import annotations

import re
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import drasyl_rs
import pytest
from netns import REPO, Lab, Process, python_env, require_lab_tools

from drasyl.identity import Identity

pytestmark = [pytest.mark.netns, pytest.mark.interop]

UDP_PORT, TCP_PORT = 22527, 8443
METRICS = "127.0.0.1:9898"  # our super peer's /metrics, inside the sp namespace
START_S = 10.0  # Python start-up; first HELLO answered
TABLE_S = 5.0  # a super peer's peer table (printed every second) shows a registered node
RELAY_S = 5.0  # a message arrives through a super peer or directly
DIRECT_S = 12.0  # both sides of a pair send short-header APPs after their first message
PROBE_INTERVAL_S = 0.25  # pacing of the messages that wait for the direct path
BULK = 20  # messages each way on the direct path
HOUSEKEEPING_S = 5.0  # both implementations' default housekeeping interval
RS_TCP_FALLBACK_S = 50.0  # drasyl-rs opens TCP when its UDP paths are stale: ~30-35 s
OUR_TCP_FALLBACK_S = 15.0  # ours after one HELLO interval (5 s) without answer
HEX = r"[0-9a-f]{64}"
MAGIC = "0x1e3f5001"
BLOCK_TABLE = "dpt_block"
APP = 1


@dataclass(frozen=True)
class Host:
    name: str
    ip4: str
    ip6: str
    identity: str  # key of the ids fixture

    def ip(self, family: int) -> str:
        return self.ip6 if family == 6 else self.ip4


SP = Host("sp", "198.51.100.10", "2001:db8::10", "id_1")
A = Host("a", "198.51.100.20", "2001:db8::20", "id_2")
B = Host("b", "198.51.100.30", "2001:db8::30", "id_3")


def counters(peer: Host) -> str:
    """nftables counters of a node's namespace: APPs relayed by the super peer, short-header
    APPs from ``peer`` (UDP payload = ``@th,64``; the message type is byte 78 of a long header)."""
    rules = []
    for ip in ("ip", "ip6"):
        sp, other = (SP.ip4, peer.ip4) if ip == "ip" else (SP.ip6, peer.ip6)
        rules += [f'{ip} saddr {sp} udp sport {UDP_PORT} @th,64,32 {MAGIC} @th,688,8 {APP} counter name "relayed_app"',
                  f'{ip} saddr {other} meta l4proto udp @th,64,32 != {MAGIC} counter name "short_app"']
    body = "\n        ".join(rules)
    return f"""
table inet dpt_count {{
    counter relayed_app {{ }}
    counter short_app {{ }}
    chain input {{
        type filter hook input priority filter - 10; policy accept;
        {body}
    }}
}}
"""


def block_udp_to(host: Host) -> str:
    """nftables that drop every UDP datagram to ``host``."""
    return f"""
table inet {BLOCK_TABLE} {{
    chain output {{
        type filter hook output priority 0; policy accept;
        ip daddr {host.ip4} meta l4proto udp counter drop
        ip6 daddr {host.ip6} meta l4proto udp counter drop
    }}
}}
"""


class Node(ABC):
    """A node of the lab, ours or drasyl-rs', seen the same way by the tests."""

    def __init__(self, net: Interop, host: Host, proc: Process) -> None:
        self.net, self.host, self.proc = net, host, proc

    @property
    def pk(self) -> str:
        return self.net.pk(self.host)

    @abstractmethod
    def send(self, to: Node, tag: str) -> None:
        """Send one message whose first word is ``tag``."""

    @abstractmethod
    def wait_received(self, sender: Node, tag: str, timeout: float) -> None:
        """Wait until the message ``tag`` from ``sender`` has arrived (at any time)."""

    @abstractmethod
    def short_apps(self, sender: Node) -> int:
        """Short-header APPs (direct path) received from ``sender`` so far."""

    @abstractmethod
    def relayed_apps(self, sender: Node) -> int:
        """APPs from ``sender`` relayed over UDP by the super peer so far."""


class RsNode(Node):
    """drasyl-rs' example node; nftables in its namespace count what arrived how (the lab has
    one other node, so ``sender`` is implied)."""

    def send(self, to: Node, tag: str) -> None:
        drasyl_rs.send(self.proc, to.pk, tag)

    def wait_received(self, sender: Node, tag: str, timeout: float) -> None:
        self.proc.wait_for_line(drasyl_rs.received(sender.pk, tag), timeout, since=0)

    def short_apps(self, sender: Node) -> int:
        return self.net.lab.nft_packets(self.net.ns[self.host.name])["short_app"]

    def relayed_apps(self, sender: Node) -> int:
        return self.net.lab.nft_packets(self.net.ns[self.host.name])["relayed_app"]


class OurNode(Node):
    """Our ``drasyl.Node`` (``tests/netns_node.py``), which says how each message arrived."""

    def send(self, to: Node, tag: str) -> None:
        self.proc.write(f"send {to.pk} {tag} 1 64")

    def wait_received(self, sender: Node, tag: str, timeout: float) -> None:
        self.proc.wait_for_line(self._recv(sender, re.escape(tag)), timeout, since=0)

    def arrivals(self, sender: Node, tag: str = r"\S+") -> list[tuple[str, str]]:
        """(how, from where) of each message from ``sender`` whose tag matches, in order."""
        regex = re.compile(self._recv(sender, tag))
        return [m.groups() for text in self.proc.lines_since(0) if (m := regex.search(text))]

    def kinds(self, sender: Node, tag: str) -> list[str]:
        return [kind for kind, _ in self.arrivals(sender, re.escape(tag))]

    def short_apps(self, sender: Node) -> int:
        return [kind for kind, _ in self.arrivals(sender)].count("short")

    def relayed_apps(self, sender: Node) -> int:
        return [kind for kind, _ in self.arrivals(sender)].count("relayed")

    @staticmethod
    def _recv(sender: Node, tag: str) -> str:
        return rf"^recv {sender.pk} {tag} \S+ \d+ (\S+) (\S+) at="


class Interop:
    """The namespaces of one test, with helpers to start super peers and nodes in them."""

    def __init__(self, lab: Lab, tmp_path, ids: dict[str, Identity], rs_dir, sp_workers: int = 1) -> None:
        self.lab, self.tmp_path, self.ids, self.rs_dir = lab, tmp_path, ids, rs_dir
        self.sp_workers = sp_workers  # DRASYL_WORKERS of our super peer
        self.ns: dict[str, str] = {}
        for host, peer in ((SP, None), (A, B), (B, A)):
            ns = lab.namespace(host.name)
            iface = lab.internet(ns, host.ip4)
            lab.ip(ns, "addr", "add", f"{host.ip6}/64", "dev", iface, "nodad")
            if peer is not None:
                lab.nft(ns, counters(peer))
            self.ns[host.name] = ns
        self.sp: Process | None = None
        self.url = ""

    def pk(self, host: Host) -> str:
        return self.ids[host.identity].public_key_hex

    def identity_file(self, host: Host) -> str:
        path = self.tmp_path / f"{host.identity}.identity"
        if not path.exists():
            self.ids[host.identity].save(path)
        return str(path)

    def describe(self) -> str:
        return self.lab.describe()

    def check(self, ok: bool, message: str) -> None:
        """Assert with the output of every process of the test."""
        assert ok, f"{message}\n{self.describe()}"

    # --- super peers ----------------------------------------------------------------------

    def our_super_peer(self, family: int = 4, unites: bool = True) -> None:
        ip = SP.ip(family)
        env = drasyl_rs.listen_env(drasyl_rs.host_port(ip, UDP_PORT), drasyl_rs.host_port(ip, TCP_PORT))
        self.sp = self.lab.start_python(
            self.ns[SP.name], "drasyl.superpeer", "drasyl-sp (ours)",
            DRASYL_IDENTITY_FILE=self.identity_file(SP), DRASYL_PROMETHEUS_LISTEN=METRICS,
            DRASYL_LOG_LEVEL="info", DRASYL_WORKERS=str(self.sp_workers), **self._settings(unites), **env)
        self.sp.wait_for_line(r"^Super peer listening on:$", START_S)
        self.url = self.sp.wait_for_line(r"^  (udp://\S+)$", START_S).match.group(1)

    def rs_super_peer(self, unites: bool = True) -> None:
        self.sp, self.url = drasyl_rs.start_super_peer(
            self.lab, self.ns[SP.name], self.rs_dir, self.identity_file(SP),
            drasyl_rs.host_port(SP.ip4, UDP_PORT), drasyl_rs.host_port(SP.ip4, TCP_PORT), **self._settings(unites))

    @staticmethod
    def _settings(unites: bool) -> dict[str, str]:
        """Peer table every second; ``unites=False`` keeps every APP on the super peer."""
        return {"DRASYL_PEERS_PRINT_INTERVAL": "1000", "DRASYL_SEND_UNITES": "5000" if unites else "-1"}

    def registered(self, node: Node, proto: str = "udp", family: int = 4, timeout: float = TABLE_S) -> str:
        """The first peer table row of the super peer that shows ``node`` with PoW ``ok``, its
        latest HELLO from its IPv``family`` address over ``proto``."""
        assert self.sp is not None
        src = re.escape(drasyl_rs.url_host(node.host.ip(family)))
        return self.sp.wait_for_line(rf"^{node.pk} +ok +\d+ +{proto}://{src}:\d+( |$)", timeout, since=0).text

    def relayed_bytes(self, src: Node, dst: Node) -> int:
        """``drasyl_sp_relayed_bytes{src,dst}`` from our super peer's /metrics."""
        pattern = rf'^drasyl_sp_relayed_bytes\{{(?=.*src="{src.pk}")(?=.*dst="{dst.pk}")[^}}]*\}} (\S+)$'
        m = re.search(pattern, self.metrics(), re.MULTILINE)
        return int(float(m.group(1))) if m else 0

    def metrics(self) -> str:
        return self.lab.exec(self.ns[SP.name], sys.executable, "-c",
                             "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
                             f"'http://{METRICS}/metrics', timeout=5).read().decode())")

    # --- nodes ----------------------------------------------------------------------------

    def rs_node(self, host: Host, family: int = 4) -> RsNode:
        proc = drasyl_rs.start_node(self.lab, self.ns[host.name], self.rs_dir, self.identity_file(host),
                                    self.url, host.ip(family), f"node {host.name} (drasyl-rs)")
        proc.wait_for_line(rf"^I am {self.pk(host)}$", drasyl_rs.START_S)
        return RsNode(self, host, proc)

    def our_node(self, host: Host, family: int = 4) -> OurNode:
        proc = self.lab.start(
            self.ns[host.name],
            [sys.executable, str(REPO / "tests" / "netns_node.py"), "--identity", self.identity_file(host),
             "--super-peer", self.url, "--addr", host.ip(family)],
            f"node {host.name} (ours)", python_env(DRASYL_LOG_LEVEL="info"))
        proc.wait_for_line(rf"^I am {self.pk(host)}$", START_S)
        return OurNode(self, host, proc)


@pytest.fixture
def interop(tmp_path, ids, request) -> Iterator[Callable[[], Interop]]:
    """``interop()`` builds the lab (our super peer with ``--sp-workers`` workers); everything
    in it is removed after the test."""
    rs_dir = drasyl_rs.binary_dir()
    require_lab_tools()
    with Lab() as lab:
        yield lambda: Interop(lab, tmp_path, ids, rs_dir, request.config.getoption("sp_workers"))


# --- exchanges ---------------------------------------------------------------------------------


def exchange(x: Node, y: Node, tag: str, count: int = 1, timeout: float = RELAY_S) -> None:
    """``x`` and ``y`` each send ``count`` messages to the other; all of them must arrive."""
    for i in range(count):
        x.send(y, f"{tag}-{x.host.name}{y.host.name}-{i}")
        y.send(x, f"{tag}-{y.host.name}{x.host.name}-{i}")
    for i in range(count):
        y.wait_received(x, f"{tag}-{x.host.name}{y.host.name}-{i}", timeout)
        x.wait_received(y, f"{tag}-{y.host.name}{x.host.name}-{i}", timeout)


def until_direct(net: Interop, x: Node, y: Node) -> float:
    """Exchange messages (losing none) until short-header APPs arrive on both sides; seconds."""
    before = x.short_apps(y), y.short_apps(x)
    started = time.monotonic()
    for probe in range(int(DIRECT_S / PROBE_INTERVAL_S)):
        exchange(x, y, f"probe{probe}")
        if x.short_apps(y) > before[0] and y.short_apps(x) > before[1]:
            return time.monotonic() - started
        time.sleep(PROBE_INTERVAL_S)
    raise AssertionError(f"no short-header APPs both ways within {DIRECT_S:g} s: {x.host.name} got "
                         f"{x.short_apps(y) - before[0]}, {y.host.name} got {y.short_apps(x) - before[1]}\n"
                         f"{net.describe()}")


def relayed_both_ways(net: Interop, x: Node, y: Node) -> None:
    """While nftables keeps ``x`` and ``y`` from talking directly, a message each way arrives
    through the super peer; then the block goes (the nodes punch at their next attempt)."""
    ns = net.ns[x.host.name]
    net.lab.nft(ns, block_udp_to(y.host))
    exchange(x, y, "relayed")
    got = {"relayed": (x.relayed_apps(y), y.relayed_apps(x)), "short": (x.short_apps(y), y.short_apps(x))}
    net.check(got == {"relayed": (1, 1), "short": (0, 0)}, f"first messages at {x.host.name}, {y.host.name}: {got}")
    net.lab.exec(ns, "nft", "delete", "table", "inet", BLOCK_TABLE)


# --- tests -------------------------------------------------------------------------------------


def test_two_rs_nodes_through_our_super_peer_go_direct_and_leave_it_out_of_the_data_path(interop):
    net = interop()
    net.our_super_peer()
    b = net.rs_node(B)
    net.registered(b)
    a = net.rs_node(A)
    net.registered(a)

    a.send(b, "first")
    b.wait_received(a, "first", RELAY_S)
    net.check((b.relayed_apps(a), b.short_apps(a)) == (1, 0),
              f"b got the first message not relayed: relayed {b.relayed_apps(a)}, short {b.short_apps(a)}")
    net.check(net.relayed_bytes(a, b) > 0, "our super peer's metrics show no bytes relayed a->b")
    took = until_direct(net, a, b)
    print(f"short-header APPs both ways {took:.2f} s after the first message")

    relayed = net.relayed_bytes(a, b), net.relayed_bytes(b, a)
    via_sp = a.relayed_apps(b), b.relayed_apps(a)
    short = a.short_apps(b), b.short_apps(a)
    exchange(a, b, "bulk", BULK)
    short_now = a.short_apps(b) - short[0], b.short_apps(a) - short[1]
    print(f"bulk: short-header APPs at a, b: {short_now}; relayed bytes a->b, b->a: {relayed}")
    net.check(min(short_now) >= BULK, f"not all {BULK} messages each way came as short-header APPs: {short_now}")
    net.check((a.relayed_apps(b), b.relayed_apps(a)) == via_sp, "the super peer relayed APPs during the bulk")
    net.check((net.relayed_bytes(a, b), net.relayed_bytes(b, a)) == relayed,
              f"our super peer's relayed bytes grew during the bulk (before: {relayed})")


def test_rs_and_our_node_through_rs_super_peer_both_ways_and_direct_after_it_dies(interop):
    net = interop()
    net.rs_super_peer()
    a = net.rs_node(A)
    b = net.our_node(B)
    row = net.registered(b)  # the drasyl-rs super peer's table shows our node with PoW ok
    print(f"drasyl-rs super peer's row for our node: {row}")
    net.registered(a)

    relayed_both_ways(net, a, b)
    took = until_direct(net, a, b)
    print(f"short-header APPs both ways {took:.2f} s after direct UDP was unblocked")

    net.sp.stop()
    short = a.short_apps(b), b.short_apps(a)
    exchange(a, b, "orphan", BULK)
    time.sleep(HOUSEKEEPING_S + 1.0)  # both nodes run a housekeeping tick without their super peer
    exchange(a, b, "orphan-after-tick")
    short_now = a.short_apps(b) - short[0], b.short_apps(a) - short[1]
    print(f"after the super peer died: short-header APPs at a, b: {short_now}")
    net.check(min(short_now) >= BULK + 1, f"not all {BULK + 1} messages each way came directly: {short_now}")


@pytest.mark.parametrize("family", [4, 6])
def test_rs_and_our_node_through_our_super_peer(interop, family):
    net = interop()
    net.our_super_peer(family)
    a = net.rs_node(A, family)
    b = net.our_node(B, family)
    b.proc.wait_for_line(r"^ready ", START_S)
    row = net.registered(a, family=family)  # our super peer's table shows theirs with PoW ok
    print(f"our super peer's row for the drasyl-rs node: {row}")

    relayed_both_ways(net, a, b)
    took = until_direct(net, a, b)
    print(f"IPv{family}: short-header APPs both ways {took:.2f} s after direct UDP was unblocked")
    remotes = {remote for kind, remote in b.arrivals(a) if kind == "short"}
    net.check(bool(remotes) and all(r.startswith(f"{A.ip(family)}:") for r in remotes),
              f"short-header APPs at our node came from {remotes}, not from {A.ip(family)}")


def test_rs_node_without_udp_to_our_super_peer_reaches_our_node_over_tcp(interop):
    """UNITEs off: both directions must go through the super peer, the drasyl-rs side over TCP."""
    net = interop()
    net.our_super_peer(unites=False)
    b = net.our_node(B)
    b.proc.wait_for_line(r"^ready ", START_S)
    net.lab.nft(net.ns[A.name], block_udp_to(SP))
    started = time.monotonic()
    a = net.rs_node(A)
    row = net.registered(a, "tcp", timeout=RS_TCP_FALLBACK_S)
    print(f"drasyl-rs node registered over TCP {time.monotonic() - started:.1f} s after start: {row}")

    a.send(b, "via-tcp")
    b.wait_received(a, "via-tcp", RELAY_S)
    net.check(b.kinds(a, "via-tcp") == ["relayed"], f"our node got it {b.kinds(a, 'via-tcp')}")
    b.send(a, "back")
    a.wait_received(b, "back", RELAY_S)
    net.check((a.relayed_apps(b), a.short_apps(b)) == (0, 0),
              f"the drasyl-rs node got APPs over UDP: relayed {a.relayed_apps(b)}, short {a.short_apps(b)}")


def test_our_node_without_udp_to_rs_super_peer_reaches_rs_node_over_tcp(interop):
    """UNITEs off: both directions must go through the super peer, our side over TCP."""
    net = interop()
    net.rs_super_peer(unites=False)
    b = net.rs_node(B)
    net.registered(b)
    net.lab.nft(net.ns[A.name], block_udp_to(SP))
    started = time.monotonic()
    a = net.our_node(A)
    a.send(b, "at-once")  # our node holds it until a super peer answers
    b.wait_received(a, "at-once", OUR_TCP_FALLBACK_S)
    print(f"first message delivered {time.monotonic() - started:.1f} s after our node started")
    row = net.registered(a, "tcp")
    print(f"drasyl-rs super peer's row for our node: {row}")
    b.send(a, "back")
    a.wait_received(b, "back", RELAY_S)
    net.check(a.kinds(b, "back") == ["tcp"], f"our node got the reply {a.kinds(b, 'back')}")


def test_rs_node_sending_at_once_after_start_loses_nothing_through_our_super_peer(interop):
    """drasyl-rs sends its first APP before its first HELLO has reached the super peer (on this
    machine every time): our super peer must hold it until the HELLO arrives, not drop it."""
    net = interop()
    net.our_super_peer()
    b = net.rs_node(B)
    net.registered(b)
    proc = drasyl_rs.start_node(net.lab, net.ns[A.name], net.rs_dir, net.identity_file(A), net.url, A.ip4,
                                "node a (drasyl-rs)")
    tags = [f"early-{i}" for i in range(3)]
    for tag in tags:
        drasyl_rs.send(proc, net.pk(B), tag)
    a = RsNode(net, A, proc)
    try:
        for tag in tags:
            b.wait_received(a, tag, 2 * RELAY_S)
    finally:
        drops = re.findall(r"^drasyl_sp_dropped_packets\{.*\} [1-9].*$", net.metrics(), re.MULTILINE)
        print(f"our super peer's drops: {drops}")
