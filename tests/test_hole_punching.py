"""Hole punching through NAT routers in network namespaces (spec §6.2.4-§6.2.6).

Lab (as ``../shared/bench/lab.sh``), built fresh for every test so that no conntrack entry
survives from one test to the next::

    sp  198.51.100.10  drasyl-sp (UDP :22527, TCP :8443, /metrics on 127.0.0.1:9898 in sp)
    --- bridge "internet" 198.51.100.0/24 ---
    nat1 wan 198.51.100.21, lan 10.1.0.1/24        nat2 wan 198.51.100.22, lan 10.2.0.1/24
    a    10.1.0.2 (default via 10.1.0.1)           b    10.2.0.2 (default via 10.2.0.1)

The NAT routers are :class:`natlab.Router` objects: nftables ``masquerade``, plain
(port-preserving, the mapping does not depend on the destination: a "cone" NAT whose filter
lets in only replies from where the host sent to, i.e. port-restricted) or
``random,fully-random`` (a new random port per destination: symmetric). "full-cone" is a 1:1
NAT of the router's public address to the host, so the router lets anyone in. Like lab.sh
(and home routers) they drop unsolicited packets to themselves in an input chain, before
conntrack confirms an entry for them.

Each node is ``tests/netns_node.py`` (a ``drasyl.Node`` bound to the host's LAN address,
default timers) driven over stdin/stdout; it tells how each message arrived (short-header
APP, long-header direct, relayed by the super peer), every UNITE it gets, and every route
change. nftables counts the UDP bytes arriving at the super peer, and its /metrics tell what
it relayed: that is how the tests see that the super peer is out of the data path.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from natlab import Router
from netns import REPO, Lab, Process, python_env, require_lab_tools

from drasyl.identity import Identity

pytestmark = pytest.mark.netns

SP_IP = "198.51.100.10"
SP_UDP_PORT = 22527
SP_TCP_PORT = 8443
METRICS = "127.0.0.1:9898"  # inside the sp namespace
START_S = 10.0  # Python start-up, first output, first ACK from the super peer
RELAY_S = 5.0  # a relayed message arrives (the first one triggers the UNITEs)
# UNITE -> direct path, both sides. Measured: 2 ms. The next housekeeping tick (5 s interval,
# any phase) is always less than 5 s away, so a 5 s limit could not tell a punch that needs
# the tick from one that does not; 2 s (as test_integration's DIRECT_S) catches it most times.
DIRECT_LIMIT_S = 2.0
BULK_COUNT, BULK_SIZE = 200, 1000
BULK_S = 10.0
NO_PUNCH_S = 8.0  # how long traffic flows while a failed punch must not take over
HEX = r"[0-9a-f]{64}"


@dataclass(frozen=True)
class Host:
    name: str
    identity: str  # key of the ids fixture
    wan: str  # the NAT router's public address
    lan_net: str  # x.y.z of the /24 behind the router
    port: int  # the node's UDP port

    @property
    def addr(self) -> str:
        return f"{self.lan_net}.2"

    @property
    def gateway(self) -> str:
        return f"{self.lan_net}.1"


A = Host("a", "id_2", "198.51.100.21", "10.1.0", 41001)
B = Host("b", "id_3", "198.51.100.22", "10.2.0", 42002)

SP_COUNTER = f"""
table inet dpt_count {{
    counter sp_udp_in {{ }}
    chain input {{
        type filter hook input priority filter - 10; policy accept;
        ip daddr {SP_IP} udp dport {SP_UDP_PORT} counter name "sp_udp_in"
    }}
}}
"""


#: The NAT kinds of these tests as :class:`natlab.Router` modes ("full-cone": a 1:1 NAT).
ROUTER_MODES = {"cone": "cone", "full-cone": "none", "symmetric": "symmetric"}


class NatLab:
    """The namespaces, NAT routers and running super peer of one test."""

    def __init__(self, lab: Lab, tmp_path, ids: dict[str, Identity], nat1: str, nat2: str) -> None:
        self.lab, self.tmp_path, self.ids = lab, tmp_path, ids
        self.nat_kinds = {A.name: nat1, B.name: nat2}
        self.sp_ns = lab.namespace("sp")
        lab.internet(self.sp_ns, SP_IP)
        lab.nft(self.sp_ns, SP_COUNTER)
        self.host_ns: dict[str, str] = {}
        for host, kind in ((A, nat1), (B, nat2)):
            router = lab.namespace(f"nat{host.name}")
            wan = lab.internet(router, host.wan)
            ns = lab.namespace(host.name)
            lan, _ = lab.veth(router, ns, f"{host.gateway}/24", f"{host.addr}/24")
            lab.ip(ns, "route", "add", "default", "via", host.gateway)
            lab.sysctl(router, "net.ipv4.ip_forward", "1")
            Router(lab, router, wan, lan, host.wan, host.addr).set_mode(ROUTER_MODES[kind])
            self.host_ns[host.name] = ns
        self.sp = lab.start_python(
            self.sp_ns, "drasyl.superpeer", "drasyl-sp",
            DRASYL_IDENTITY_FILE=self.identity_file("id_1"),
            DRASYL_UDP4_LISTEN=f"{SP_IP}:{SP_UDP_PORT}", DRASYL_UDP6_LISTEN="",
            DRASYL_TCP4_LISTEN=f"{SP_IP}:{SP_TCP_PORT}", DRASYL_TCP6_LISTEN="",
            DRASYL_PEERS_PRINT_INTERVAL="0", DRASYL_PROMETHEUS_LISTEN=METRICS,
        )
        self.sp.wait_for_line(r"^Super peer listening on:$", START_S)
        self.url = self.sp.wait_for_line(r"^  (udp://\S+)$", START_S).match.group(1)
        self.nodes: dict[str, Process] = {}

    def identity_file(self, name: str) -> str:
        path = self.tmp_path / f"{name}.identity"
        if not path.exists():
            self.ids[name].save(path)
        return str(path)

    def pk(self, host: Host) -> str:
        return self.ids[host.identity].public_key_hex

    def start_nodes(self) -> tuple[Process, Process]:
        """Nodes a and b, both registered with the super peer."""
        for host in (A, B):
            self.nodes[host.name] = self.lab.start(
                self.host_ns[host.name],
                [sys.executable, str(REPO / "tests" / "netns_node.py"),
                 "--identity", self.identity_file(host.identity), "--super-peer", self.url,
                 "--addr", host.addr, "--port", str(host.port)],
                f"node-{host.name}", python_env(DRASYL_LOG_LEVEL="info"))
        for host in (A, B):
            node = self.nodes[host.name]
            assert node.wait_for_line(rf"^I am ({HEX})$", START_S).match.group(1) == self.pk(host)
            node.wait_for_line(r"^ready ", START_S)
        return self.nodes[A.name], self.nodes[B.name]

    def sp_udp_bytes(self) -> int:
        """Bytes (IP length) of UDP datagrams that arrived at the super peer's port."""
        out = json.loads(self.lab.exec(self.sp_ns, "nft", "-j", "list", "counter", "inet", "dpt_count", "sp_udp_in"))
        return next(item["counter"]["bytes"] for item in out["nftables"] if "counter" in item)

    def relayed_bytes(self, src: Host, dst: Host) -> int:
        """``drasyl_sp_relayed_bytes{src,dst}`` from the super peer's /metrics."""
        text = self.lab.exec(self.sp_ns, sys.executable, "-c",
                             "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
                             f"'http://{METRICS}/metrics', timeout=5).read().decode())")
        pattern = re.compile(rf'^drasyl_sp_relayed_bytes\{{(?=.*src="{self.pk(src)}")(?=.*dst="{self.pk(dst)}")'
                             r'[^}]*\} (\S+)$', re.MULTILINE)
        m = pattern.search(text)
        return int(float(m.group(1))) if m else 0

    def describe(self) -> str:
        return self.lab.describe()


@pytest.fixture
def nat_lab(tmp_path, ids) -> Iterator:
    """``nat_lab(nat1, nat2)`` builds a fresh lab; all of it is removed after the test."""
    require_lab_tools()
    with Lab() as lab:
        yield lambda nat1, nat2: NatLab(lab, tmp_path, ids, nat1, nat2)


# --- reading the drivers' output -------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    seq: int
    length: int
    kind: str  # short, direct, relayed, tcp
    remote: str
    at: float


def received(net: NatLab, node: Process, sender: Host, tag: str, count: int, timeout: float,
             since: int = 0) -> list[Received]:
    """Wait until ``node`` printed ``count`` distinct messages ``tag 0..count-1`` from ``sender``."""
    regex = rf"^recv {net.pk(sender)} {re.escape(tag)} (\d+) (\d+) (\S+) (\S+) at=(\S+)$"
    deadline = time.monotonic() + timeout
    got: dict[int, Received] = {}
    while len(got) < count:
        try:
            line = node.wait_for_line(regex, max(0.0, deadline - time.monotonic()), since=since)
        except AssertionError as exc:
            raise AssertionError(f"{node.name}: {len(got)} of {count} messages '{tag}' from {sender.name} "
                                 f"within {timeout:g} s (missing e.g. "
                                 f"{sorted(set(range(count)) - set(got))[:10]})\n{exc}") from None
        seq, length, kind, remote, at = line.match.groups()
        got[int(seq)] = Received(int(seq), int(length), kind, remote, float(at))
        since = line.index + 1
    return [got[i] for i in range(count)]


def driver_at(line) -> float:
    return float(re.search(r"\bat=(\S+)", line.text).group(1))


def kinds(messages: list[Received]) -> dict[str, int]:
    out: dict[str, int] = {}
    for m in messages:
        out[m.kind] = out.get(m.kind, 0) + 1
    return out


def status(node: Process, peer_pk: str) -> str:
    since = node.mark()
    node.write(f"status {peer_pk}")
    return node.wait_for_line(rf"^status {peer_pk} ", 5.0, since=since).text


def start_pair(net: NatLab) -> tuple[Process, Process, str, str]:
    a, b = net.start_nodes()
    pa, pb = net.pk(A), net.pk(B)
    a.write(f"watch {pb}")
    b.write(f"watch {pa}")
    a.wait_for_line(rf"^path {pb} none ", 5.0)
    b.wait_for_line(rf"^path {pa} none ", 5.0)
    return a, b, pa, pb


def first_message_relayed(net: NatLab, a: Process, b: Process) -> tuple[float, str, str]:
    """A sends one message to B: it must be relayed; both sides get a UNITE.
    Returns (driver time of A's UNITE, endpoints A was told for B, endpoints B was told for A)."""
    pa, pb = net.pk(A), net.pk(B)
    a.write(f"send {pb} first 1 100")
    [first] = received(net, b, A, "first", 1, RELAY_S)
    assert first.kind == "relayed", f"the first message came {first.kind} from {first.remote}\n{net.describe()}"
    unite_a = a.wait_for_line(rf"^unite {pb} endpoints=(\S+) ", RELAY_S, since=0)
    unite_b = b.wait_for_line(rf"^unite {pa} endpoints=(\S+) ", RELAY_S, since=0)
    print(f"UNITE to a about b: {unite_a.match.group(1)}; UNITE to b about a: {unite_b.match.group(1)}")
    return driver_at(unite_a), unite_a.match.group(1), unite_b.match.group(1)


def stream_both_ways(net: NatLab, a: Process, b: Process, tag: str,
                     seconds: float) -> tuple[list[Received], list[Received]]:
    """Both nodes send one message every 250 ms for ``seconds``; all must arrive."""
    pa, pb = net.pk(A), net.pk(B)
    count, interval_ms = int(seconds * 4), 250
    a.write(f"stream {pb} {tag}_ab {count} {interval_ms} 200")
    b.write(f"stream {pa} {tag}_ba {count} {interval_ms} 200")
    timeout = seconds + RELAY_S
    ab = received(net, b, A, f"{tag}_ab", count, timeout)
    ba = received(net, a, B, f"{tag}_ba", count, timeout)
    print(f"{tag}: a->b {kinds(ab)}, b->a {kinds(ba)}")
    return ab, ba


def path_lines(node: Process, peer_pk: str) -> list[str]:
    return [text for text in node.lines_since(0) if text.startswith(f"path {peer_pk} ")]


# --- tests -----------------------------------------------------------------------------------


def test_cone_nat_punches_a_direct_path_and_the_super_peer_leaves_the_data_path(nat_lab):
    net = nat_lab("cone", "cone")
    a, b, pa, pb = start_pair(net)
    sent = time.monotonic()
    unite_at, endpoints_for_b, endpoints_for_a = first_message_relayed(net, a, b)
    # plain masquerade keeps the source port: the super peer saw each node on its own port
    assert f"{B.wan}:{B.port}" in endpoints_for_b.split(","), endpoints_for_b
    assert f"{A.wan}:{A.port}" in endpoints_for_a.split(","), endpoints_for_a

    times = {}
    for node, peer_pk, name in ((a, pb, "a->b"), (b, pa, "b->a")):
        line = node.wait_for_line(rf"^path {peer_pk} direct ", DIRECT_LIMIT_S + RELAY_S, since=0)
        times[name] = driver_at(line) - unite_at
        print(f"{name}: direct {times[name]:.3f} s after A's UNITE "
              f"({line.at - sent:.3f} s after the first message was written): {line.text}")
    slow = {k: round(v, 3) for k, v in times.items() if v > DIRECT_LIMIT_S}
    assert not slow, f"direct path later than {DIRECT_LIMIT_S} s after the UNITE: {slow}\n{net.describe()}"
    for node, peer_pk in ((a, pb), (b, pa)):
        text = status(node, peer_pk)
        print(text)
        assert " route=direct " in text and f"best={B.wan if node is a else A.wan}:" in text, \
            f"{text}\n{net.describe()}"

    relayed_before = net.relayed_bytes(A, B), net.relayed_bytes(B, A)
    assert relayed_before[0] > 0, f"the super peer's metrics show no relayed bytes a->b\n{net.describe()}"
    sp_before = net.sp_udp_bytes()
    a.write(f"send {pb} bulk_ab {BULK_COUNT} {BULK_SIZE}")
    b.write(f"send {pa} bulk_ba {BULK_COUNT} {BULK_SIZE}")
    ab = received(net, b, A, "bulk_ab", BULK_COUNT, BULK_S)
    ba = received(net, a, B, "bulk_ba", BULK_COUNT, BULK_S)
    sp_bytes = net.sp_udp_bytes() - sp_before
    relayed_after = net.relayed_bytes(A, B), net.relayed_bytes(B, A)
    payload = 2 * BULK_COUNT * BULK_SIZE
    print(f"bulk: a->b {kinds(ab)}, b->a {kinds(ba)}; UDP bytes at the super peer meanwhile: {sp_bytes} "
          f"(payload {payload}); relayed bytes a->b, b->a before {relayed_before}, after {relayed_after}")
    for name, msgs, src in (("a->b", ab, A.wan), ("b->a", ba, B.wan)):
        wrong = [m for m in msgs if m.kind != "short" or not m.remote.startswith(f"{src}:")]
        assert not wrong, (f"{name}: {len(wrong)} messages not as direct short-header APPs from {src}, "
                           f"e.g. {wrong[:3]}\n{net.describe()}")
    assert sp_bytes < payload // 20, f"the super peer got {sp_bytes} UDP bytes during the direct bulk\n{net.describe()}"
    assert relayed_after == relayed_before, f"the super peer relayed during the direct bulk\n{net.describe()}"


def test_symmetric_nat_stays_relayed_and_loses_nothing(nat_lab):
    net = nat_lab("symmetric", "symmetric")
    a, b, pa, pb = start_pair(net)
    first_message_relayed(net, a, b)
    ab, ba = stream_both_ways(net, a, b, "sym", NO_PUNCH_S)
    for node, peer_pk in ((a, pb), (b, pa)):
        print(status(node, peer_pk))
        changes = path_lines(node, peer_pk)
        assert not [t for t in changes if " direct " in t], \
            f"{node.name}: a direct path through symmetric NATs: {changes}\n{net.describe()}"
    not_relayed = [m for m in ab + ba if m.kind != "relayed"]
    assert not not_relayed, f"messages that did not come via the super peer: {not_relayed[:3]}\n{net.describe()}"


@pytest.mark.parametrize("cone", ["cone", "full-cone"])
def test_symmetric_nat_on_one_side(nat_lab, cone):
    """a behind a cone NAT, b behind a symmetric one: messages must arrive; the path is reported.

    Behind the port-restricted cone (plain masquerade) b's HELLO comes from a port a never
    sent to, so a's router drops it, and a's HELLO goes to the port b's NAT chose for the
    super peer: no punch, so both stay relayed, like two symmetric NATs. Behind the full cone
    b's HELLO gets in, and a's answer to the unknown source (spec §6.2.5 step 4) completes the
    punch: that variant must go direct.
    """
    net = nat_lab(cone, "symmetric")
    a, b, pa, pb = start_pair(net)
    unite_at, _, _ = first_message_relayed(net, a, b)
    stream_both_ways(net, a, b, "mixed", 6.0)
    routes = {}
    for node, peer_pk, name in ((a, pb, "a->b"), (b, pa, "b->a")):
        changes = [re.sub(r" at=(\S+)", lambda m: f" (+{float(m.group(1)) - unite_at:.3f} s after UNITE)", t)
                   for t in path_lines(node, peer_pk)]
        print(f"{cone} a / symmetric b, {name}: " + "; ".join(changes))
        text = status(node, peer_pk)
        print(text)
        routes[name] = re.search(r" route=(\S+) ", text).group(1)
    expected = "direct" if cone == "full-cone" else "relayed"
    assert routes == {"a->b": expected, "b->a": expected}, f"{routes}\n{net.describe()}"
