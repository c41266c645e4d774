"""Behaviour of the sans-I/O node core (spec §6.2, §7) with a fake clock.

Two kinds of tests:

- unit tests feed a single :class:`NodeCore` packets built here with the codec and the real
  keys of the other side, and disarm what it sends with those keys;
- scenario tests wire node cores and a real :class:`SuperPeerCore` together with
  :class:`Net`, a tiny in-process network (instant delivery, optional NAT, a ``blocked``
  predicate to drop traffic), to run registration, relay, UNITE, hole punching and the TCP
  fallback end to end.

No sockets and no sleeps: ``now`` is a plain integer in µs that the tests move.
"""

from __future__ import annotations

import os

import pytest
from fakeclock import MS, T0, S

from drasyl.crypto import session_keys
from drasyl.errors import DrasylError
from drasyl.identity import Identity, pow_is_valid
from drasyl.messages import (
    ACK,
    APP,
    HELLO,
    UNITE,
    Ack,
    HelloNodePeer,
    HelloSuperPeer,
    Unite,
    decode_endpoints,
    encode_endpoints,
    encode_message,
    encode_short,
    open_body,
    open_short,
    parse_long_header,
)
from drasyl.node.core import MAX_PATHS_PER_PEER, MAX_PAYLOAD, NodeConfig, NodeCore, PayloadTooLarge
from drasyl.node.events import DIRECT, RELAYED, TCP_PATH, CloseTcp, OpenTcp, PathChanged
from drasyl.superpeer.core import SuperPeerConfig, SuperPeerCore
from drasyl.transmit import TCP, UDP
from drasyl.urls import SuperPeerUrl

SP_ADDR = ("192.0.2.100", 22527)
SP_ADDR6 = ("2001:db8::100", 22527)
SP2_ADDR = ("192.0.2.200", 22527)
A_LOCAL, A_PUBLIC = ("10.0.0.1", 1001), ("198.51.100.1", 40001)
B_LOCAL, B_PUBLIC = ("10.1.0.1", 1002), ("203.0.113.2", 40002)
A_TCP = ("198.51.100.1", 50001)


@pytest.fixture(scope="module")
def sp_id() -> Identity:
    return Identity.generate(difficulty=0)  # nodes do not check a super peer's PoW


@pytest.fixture(scope="module")
def sp2_id() -> Identity:
    return Identity.generate(difficulty=0)


@pytest.fixture
def a(ids):
    return ids["id_1"]


@pytest.fixture
def b(ids):
    return ids["id_2"]


# --- helpers -------------------------------------------------------------------------------


def url(sp: Identity, addr=SP_ADDR) -> SuperPeerUrl:
    return SuperPeerUrl(addr[0], addr[1], sp.public_key, 1, 8443)


def make_node(me: Identity, sps: list[tuple[Identity, tuple]], locals_=(A_LOCAL,), now: int = T0,
              **settings) -> NodeCore:
    node = NodeCore(me, [url(sp, addr) for sp, addr in sps], NodeConfig(**settings), now)
    node.set_local_addresses(list(locals_))
    for sp, addr in sps:
        node.set_super_peer_addresses(sp.public_key, [addr])
    return node


def rx_key(me: Identity, other: Identity | bytes) -> bytes:
    return session_keys(me, other if isinstance(other, bytes) else other.public_key)[0]


def tx_key(me: Identity, other: Identity | bytes) -> bytes:
    return session_keys(me, other if isinstance(other, bytes) else other.public_key)[1]


def message(mtype: int, sender: Identity, recipient: Identity | bytes, body: bytes, *, armed: bool = True,
            pow_: int | None = None, network_id: int = 1, hop: int = 0) -> bytes:
    recipient_pk = recipient if isinstance(recipient, bytes) else recipient.public_key
    key = tx_key(sender, recipient_pk) if armed else None
    data = bytearray(encode_message(mtype, network_id, recipient_pk, sender.public_key,
                                    sender.proof_of_work if pow_ is None else pow_, body, key))
    data[4] = hop
    return bytes(data)


def opened(data, me: Identity, sender: Identity | bytes):
    """(header, body) of a long-header message to ``me``, disarmed with my key for ``sender``."""
    data = bytes(data)
    header = parse_long_header(data)
    return header, bytes(open_body(data, header, rx_key(me, sender) if header.armed else None))


def sp_ack(sp: Identity, node: Identity, time: int) -> bytes:
    return message(ACK, sp, node, Ack(time).encode())


def udp_to(outbox, remote) -> list:
    return [t for t in outbox if t[1] == UDP and t[3] == remote]


def of_type(outbox, mtype: int) -> list:
    return [t for t in outbox if len(t[0]) >= 79 and bytes(t[0][:4]) == b"\x1e\x3f\x50\x01"
            and t[0][78] == mtype]


class Net:
    """An in-process network between node cores and super peer cores.

    Delivery is instant and in order; time moves only in :meth:`run`. A node may sit behind
    a NAT (``public``): others see that address as its source, and only it is routable from
    outside, so the LAN endpoints it reports are unreachable. ``blocked(proto, src, dst)``
    drops packets (a firewall, a lost UDP path). TCP connections exist only after
    :meth:`connect_tcp`, as the node's adapter would open them on ``OpenTcp``.
    """

    def __init__(self, now: int = T0) -> None:
        self.now = now
        self.sps: dict[tuple, SuperPeerCore] = {}
        self.nodes: list[NodeCore] = []
        self.routes: dict[tuple, tuple[NodeCore, tuple]] = {}  # reachable address -> (node, its local)
        self.source: dict[tuple[int, tuple], tuple] = {}  # (node id, local) -> address others see
        self.tcp: dict[tuple, tuple[NodeCore, bytes]] = {}  # client address -> (node, SP key)
        self.tcp_by_node: dict[tuple[int, bytes], tuple] = {}
        self.blocked = lambda proto, src, dst: False
        self.sent: list[tuple] = []  # (now, proto, src, dst, bytes) of everything delivered
        self.dropped: list[tuple] = []

    def add_sp(self, identity: Identity, addr=SP_ADDR, **settings) -> SuperPeerCore:
        sp = self.sps[addr] = SuperPeerCore(identity, SuperPeerConfig(**settings), self.now)
        return sp

    def add_node(self, identity: Identity, local, public=None, **settings) -> NodeCore:
        urls = [SuperPeerUrl(addr[0], addr[1], sp.public_key, 1, 8443) for addr, sp in self.sps.items()]
        node = NodeCore(identity, urls, NodeConfig(**settings), self.now)
        node.set_local_addresses([local])
        for addr, sp in self.sps.items():
            node.set_super_peer_addresses(sp.public_key, [addr])
        self.nodes.append(node)
        self.routes[public or local] = (node, local)
        if public:
            self.source[(id(node), local)] = public
        return node

    def connect_tcp(self, node: NodeCore, sp_pk: bytes, client) -> None:
        self.tcp[client] = (node, sp_pk)
        self.tcp_by_node[(id(node), sp_pk)] = client
        node.tcp_connected(sp_pk, self.now)
        self.run()

    def close_tcp(self, node: NodeCore, sp_pk: bytes) -> None:
        client = self.tcp_by_node.pop((id(node), sp_pk), None)
        self.tcp.pop(client, None)

    def run(self, until: int | None = None) -> None:
        """Deliver everything and run every timer that falls due up to ``until``."""
        until = self.now if until is None else until
        cores = [*self.sps.values(), *self.nodes]
        while True:
            self.deliver()
            due = [c.next_timer() for c in cores if c.next_timer() <= until]
            if not due:
                break
            self.now = max(self.now, min(due))
            for core in cores:
                if core.next_timer() <= self.now:
                    core.handle_timer(self.now)
        self.now = until
        self.deliver()

    def advance(self, seconds: float) -> None:
        self.run(self.now + int(seconds * S))

    def send(self, node: NodeCore, recipient: bytes, payload: bytes) -> None:
        node.send(recipient, payload, self.now)
        self.deliver()

    def deliver(self) -> None:
        for _ in range(10_000):
            batch = []
            for addr, sp in self.sps.items():
                batch += [(sp, addr, t) for t in sp.outbox]
                sp.outbox.clear()
            for node in self.nodes:
                batch += [(node, None, t) for t in node.outbox]
                node.outbox.clear()
            if not batch:
                return
            for core, sp_addr, t in batch:
                if sp_addr is None:
                    self._from_node(core, *t)
                else:
                    self._from_sp(core, sp_addr, *t)
        raise AssertionError("packets keep bouncing")

    def _from_node(self, node: NodeCore, data, proto, local, remote) -> None:
        data = bytes(data)
        if proto == TCP:
            client = self.tcp_by_node.get((id(node), remote))
            sp_addr = next(a for a, sp in self.sps.items() if sp.public_key == remote)
            if client is None or self.blocked(TCP, client, sp_addr):
                self.dropped.append((self.now, TCP, client, sp_addr, data))
                return
            self.sent.append((self.now, TCP, client, sp_addr, data))
            if not self.sps[sp_addr].receive(data, TCP, None, client, self.now):
                self.close_tcp(node, remote)
                node.tcp_closed(remote, self.now)
            return
        src = self.source.get((id(node), local), local)
        if self.blocked(UDP, src, remote) or (remote not in self.sps and remote not in self.routes):
            self.dropped.append((self.now, UDP, src, remote, data))
            return
        self.sent.append((self.now, UDP, src, remote, data))
        if remote in self.sps:
            self.sps[remote].receive(data, UDP, remote, src, self.now)
        else:
            peer, peer_local = self.routes[remote]
            peer.receive_datagram(data, peer_local, src, self.now)

    def _from_sp(self, sp: SuperPeerCore, sp_addr, data, proto, local, remote) -> None:
        data = bytes(data)
        if proto == TCP:
            node, sp_pk = self.tcp.get(remote, (None, None))
            if node is not None and node.super_peers[sp_pk].tcp is None:
                self.close_tcp(node, sp_pk)  # the adapter closed it on CloseTcp
                node = None
            if node is None or self.blocked(TCP, sp_addr, remote):
                self.dropped.append((self.now, TCP, sp_addr, remote, data))
                return
            self.sent.append((self.now, TCP, sp_addr, remote, data))
            node.receive_tcp(sp_pk, data, self.now)
            return
        assert local == sp_addr
        if self.blocked(UDP, sp_addr, remote) or remote not in self.routes:
            self.dropped.append((self.now, UDP, sp_addr, remote, data))
            return
        self.sent.append((self.now, UDP, sp_addr, remote, data))
        node, node_local = self.routes[remote]
        node.receive_datagram(data, node_local, sp_addr, self.now)

    def mark(self) -> int:
        """A position in the log of delivered packets, for :meth:`traffic`."""
        return len(self.sent)

    def traffic(self, since: int = 0, proto=None, src=None, dst=None, mtype=None) -> list:
        """Packets delivered after mark ``since`` matching the filters; mtype "short" = short APP."""
        out = []
        for t, p, s, d, data in self.sent[since:]:
            if proto is not None and p != proto:
                continue
            if src is not None and s != src or dst is not None and d != dst:
                continue
            if mtype is not None:
                long_ = len(data) >= 79 and data[:4] == b"\x1e\x3f\x50\x01"
                if mtype == "short" and long_ or mtype != "short" and not (long_ and data[78] == mtype):
                    continue
            out.append(data)
        return out


@pytest.fixture
def net(sp_id):
    net = Net()
    net.add_sp(sp_id)
    return net


def two_nodes(net: Net, a: Identity, b: Identity, **settings) -> tuple[NodeCore, NodeCore]:
    """A and B, each behind its own NAT, registered with the super peer."""
    node_a = net.add_node(a, A_LOCAL, A_PUBLIC, **settings)
    node_b = net.add_node(b, B_LOCAL, B_PUBLIC, **settings)
    net.run()
    return node_a, node_b


def make_direct(net: Net, node_a: NodeCore, node_b: NodeCore, a: Identity, b: Identity) -> None:
    """A sends one APP (relayed); the SP's UNITE lets both punch; both end up direct."""
    net.send(node_a, b.public_key, b"via relay")
    assert node_a.peers[b.public_key].best is not None
    assert node_b.peers[a.public_key].best is not None
    assert node_b.inbox[-1] == (a.public_key, b"via relay")


# --- registration with super peers ---------------------------------------------------------


def test_registration_hello_to_every_super_peer_path_at_start_and_every_interval(sp_id, a):
    locals_ = [("10.0.0.1", 1001), ("10.0.0.2", 1001), ("2001:db8:a::1", 1001)]
    # probing off: exactly drasyl-rs' datagrams (its STUN requests are in test_probing.py)
    node = NodeCore(a, [url(sp_id)], NodeConfig(probing=False), T0)
    node.set_local_addresses(locals_)
    node.set_super_peer_addresses(sp_id.public_key, [SP_ADDR, ("192.0.2.101", 22527), SP_ADDR6])
    node.handle_timer(T0)
    # one path per local socket, to the first super peer address of the same family
    assert sorted((t[2], t[3]) for t in node.outbox) == sorted(
        [(locals_[0], SP_ADDR), (locals_[1], SP_ADDR), (locals_[2], SP_ADDR6)])
    sp_rx = rx_key(sp_id, a)
    for data, proto, _, _ in node.outbox:
        assert proto == UDP
        header = parse_long_header(data)
        assert (header.message_type, header.armed, header.hop_count) == (HELLO, True, 0)
        assert (header.recipient, header.sender, header.network_id) == (sp_id.public_key, a.public_key, 1)
        assert header.proof_of_work == a.proof_of_work
        hello = HelloSuperPeer.parse(open_body(data, header, sp_rx))  # the SP's rx key opens it
        assert (hello.time, hello.child_time) == (T0, 1)
        assert decode_endpoints(hello.endpoints) == locals_
        assert len(data) == 143 + 18 * 3
    node.outbox.clear()
    node.handle_timer(T0 + 5 * S - 1)
    assert node.outbox == []
    assert node.next_timer() == T0 + 5 * S
    node.handle_timer(T0 + 5 * S)
    assert len(node.outbox) == 3
    assert {HelloSuperPeer.parse(opened(t[0], sp_id, a)[1]).time for t in node.outbox} == {T0 + 5 * S}


def test_registration_hello_is_accepted_by_the_super_peer_core(net, a, sp_id):
    node = net.add_node(a, A_LOCAL, A_PUBLIC)
    net.run()
    sp = net.sps[SP_ADDR]
    peer = sp.peers[a.public_key]
    assert (peer.src, decode_endpoints(peer.endpoints)) == (A_PUBLIC, [A_LOCAL])
    assert node.peer_list()[0].path == "udp"
    assert net.traffic(mtype=ACK, dst=A_PUBLIC)


def sp_stamp(node: NodeCore, sp: Identity, remote=SP_ADDR, local=A_LOCAL) -> int:
    """Timestamp of the last HELLO the node sent to this super peer on this path."""
    return node.super_peers[sp.public_key].paths[(local, remote)].stamps[-1][0]


def test_super_peer_rtt_is_the_median_of_the_last_five_acks(sp_id, a):
    node = make_node(a, [(sp_id, SP_ADDR)])
    for i, rtt_ms in enumerate((90, 10, 50, 20, 40, 30)):  # the first sample falls out of the window
        tick = T0 + i * 5 * S
        node.handle_timer(tick)
        node.receive_datagram(sp_ack(sp_id, a, sp_stamp(node, sp_id)), A_LOCAL, SP_ADDR, tick + rtt_ms * MS)
    [row] = node.peer_list()
    assert row.rtt_ms == 30  # median of 10, 50, 20, 40, 30
    assert row.remote == SP_ADDR


def test_lowest_rtt_super_peer_becomes_the_default_relay(sp_id, sp2_id, a, b):
    node = make_node(a, [(sp_id, SP_ADDR), (sp2_id, SP2_ADDR)])
    node.handle_timer(T0)
    node.outbox.clear()
    now = T0 + 80 * MS
    node.receive_datagram(sp_ack(sp_id, a, sp_stamp(node, sp_id)), A_LOCAL, SP_ADDR, now)
    node.send(b.public_key, b"1", now)  # the first super peer that answered relays at once
    assert [t[3] for t in node.outbox] == [SP_ADDR]
    node.outbox.clear()
    node.receive_datagram(sp_ack(sp2_id, a, sp_stamp(node, sp2_id, SP2_ADDR)), A_LOCAL, SP2_ADDR, T0 + 10 * MS)
    node.handle_timer(T0 + 5 * S)  # the default is recomputed at the tick
    node.outbox.clear()
    node.send(b.public_key, b"2", T0 + 5 * S)
    [(data, proto, local, remote)] = node.outbox
    assert (proto, local, remote) == (UDP, A_LOCAL, SP2_ADDR)
    header, body = opened(data, b, a)  # end-to-end: B opens it with its A key
    assert (header.message_type, header.hop_count, header.recipient, header.sender) == (
        APP, 0, b.public_key, a.public_key)
    assert body == b"2"


def test_relaying_moves_to_another_super_peer_one_interval_after_the_default_stops_answering(
        sp_id, sp2_id, a, b):
    node = make_node(a, [(sp_id, SP_ADDR), (sp2_id, SP2_ADDR)])
    node.handle_timer(T0)
    node.receive_datagram(sp_ack(sp_id, a, sp_stamp(node, sp_id)), A_LOCAL, SP_ADDR, T0 + 10 * MS)  # fast
    node.receive_datagram(sp_ack(sp2_id, a, sp_stamp(node, sp2_id, SP2_ADDR)), A_LOCAL, SP2_ADDR, T0 + 50 * MS)
    for tick in (5, 10):  # from now on only the second super peer answers
        node.handle_timer(T0 + tick * S)
        node.outbox.clear()
        node.send(b.public_key, b"at %d s" % tick, T0 + tick * S + S)
        # tick 5: the first one's HELLO has just left, nothing is unanswered yet;
        # tick 10: its HELLO of tick 5 got no answer for an interval, the second one answered
        assert [t[3] for t in node.outbox] == [SP_ADDR if tick == 5 else SP2_ADDR], tick
        node.receive_datagram(sp_ack(sp2_id, a, sp_stamp(node, sp2_id, SP2_ADDR)), A_LOCAL, SP2_ADDR,
                              T0 + tick * S + 50 * MS)
    node.handle_timer(T0 + 15 * S)
    node.receive_datagram(sp_ack(sp_id, a, sp_stamp(node, sp_id)), A_LOCAL, SP_ADDR, T0 + 15 * S + 10 * MS)
    node.receive_datagram(sp_ack(sp2_id, a, sp_stamp(node, sp2_id, SP2_ADDR)), A_LOCAL, SP2_ADDR,
                          T0 + 15 * S + 50 * MS)
    node.handle_timer(T0 + 20 * S)  # the first one answers again: the faster one relays again
    node.outbox.clear()
    node.send(b.public_key, b"back", T0 + 20 * S + S)
    assert [t[3] for t in node.outbox] == [SP_ADDR]


def test_super_peer_without_rtt_samples_is_not_chosen_as_default(sp_id, sp2_id, a, b):
    node = make_node(a, [(sp_id, SP_ADDR), (sp2_id, SP2_ADDR)])  # SP 1 is listed first
    node.handle_timer(T0)
    node.outbox.clear()
    node.receive_datagram(sp_ack(sp2_id, a, sp_stamp(node, sp2_id, SP2_ADDR)), A_LOCAL, SP2_ADDR, T0 + 20 * MS)
    node.send(b.public_key, b"1", T0 + 20 * MS)  # only SP 2 has answered: it relays at once
    assert [t[3] for t in node.outbox] == [SP2_ADDR]
    node.handle_timer(T0 + 5 * S)
    node.outbox.clear()
    node.send(b.public_key, b"2", T0 + 5 * S)
    assert [t[3] for t in node.outbox] == [SP2_ADDR]


def test_relayed_apps_before_any_super_peer_answered_are_queued_and_flushed_on_first_ack(sp_id, a, b):
    node = make_node(a, [(sp_id, SP_ADDR)])
    node.handle_timer(T0)
    node.outbox.clear()
    for i in range(3):
        node.send(b.public_key, b"queued %d" % i, T0 + i)
    assert node.outbox == []  # not sprayed over unconfirmed paths
    node.receive_datagram(sp_ack(sp_id, a, T0), A_LOCAL, SP_ADDR, T0 + 10 * MS)
    assert all(t[1:] == (UDP, A_LOCAL, SP_ADDR) for t in node.outbox)
    assert [opened(t[0], b, a)[1] for t in node.outbox] == [b"queued 0", b"queued 1", b"queued 2"]


def test_relay_queue_is_bounded_and_drops_the_oldest(sp_id, a, b):
    node = make_node(a, [(sp_id, SP_ADDR)], relay_queue_limit=3)
    node.handle_timer(T0)
    node.outbox.clear()
    for i in range(5):
        node.send(b.public_key, b"%d" % i, T0)
    assert node.drops["relay_queue_full"] == 2
    node.receive_datagram(sp_ack(sp_id, a, T0), A_LOCAL, SP_ADDR, T0 + 10 * MS)
    assert [opened(t[0], b, a)[1] for t in node.outbox] == [b"2", b"3", b"4"]


def test_ack_from_super_peer_with_future_time_gives_no_rtt_sample(sp_id, a):
    node = make_node(a, [(sp_id, SP_ADDR)])
    node.handle_timer(T0)
    node.receive_datagram(sp_ack(sp_id, a, T0 + 10 * S), A_LOCAL, SP_ADDR, T0 + MS)
    assert node.peer_list()[0].rtt_ms is None


def test_hello_and_app_from_a_super_peer_are_rejected(sp_id, a):
    node = make_node(a, [(sp_id, SP_ADDR)])
    for mtype, body in ((HELLO, HelloNodePeer(T0, b"abcd").encode()), (APP, b"x")):
        node.receive_datagram(message(mtype, sp_id, a, body), A_LOCAL, SP_ADDR, T0)
    assert node.outbox == [] and node.inbox == [] and node.peers == {}
    assert node.drops["unexpected"] == 2


# --- UNITE and node HELLO/ACK ---------------------------------------------------------------


def test_unite_makes_node_hello_each_endpoint_from_each_local_socket_of_same_family(sp_id, a, b):
    locals_ = [("10.0.0.1", 1001), ("10.0.0.2", 1001), ("2001:db8:a::1", 1001)]
    node = make_node(a, [(sp_id, SP_ADDR)], locals_)
    node.send(b.public_key, b"x", T0)  # B must be known before a UNITE about it is used
    node.outbox.clear()
    endpoints = [("10.1.0.1", 1002), ("203.0.113.2", 40002), ("2001:db8:b::1", 1002)]
    unite = message(UNITE, sp_id, a, Unite(b.public_key, encode_endpoints(endpoints)).encode())
    now = T0 + S
    node.receive_datagram(unite, locals_[0], SP_ADDR, now)
    pairs = sorted((t[2], t[3]) for t in node.outbox)
    assert pairs == sorted([(l, e) for l in locals_[:2] for e in endpoints[:2]] + [(locals_[2], endpoints[2])])
    rx_short_id = node.peers[b.public_key].rx_short_id
    stamps = []
    for data, proto, _, _ in node.outbox:
        header, body = opened(data, b, a)
        assert (proto, header.message_type, header.recipient, header.sender) == (
            UDP, HELLO, b.public_key, a.public_key)
        assert len(data) == 139
        hello = HelloNodePeer.parse(body)
        assert hello.short_id == rx_short_id
        stamps.append(hello.time)
    assert stamps == list(range(now, now + 5))  # wall time, one µs apart: never repeated
    # the same UNITE again: every endpoint already has a path
    node.outbox.clear()
    node.receive_datagram(unite, locals_[0], SP_ADDR, now)
    assert node.outbox == []


def test_unite_about_unknown_peer_or_with_unites_disabled_is_ignored(sp_id, a, b):
    unite = message(UNITE, sp_id, a, Unite(b.public_key, encode_endpoints([B_PUBLIC])).encode())
    node = make_node(a, [(sp_id, SP_ADDR)])
    node.receive_datagram(unite, A_LOCAL, SP_ADDR, T0)
    assert node.outbox == [] and node.peers == {}
    node = make_node(a, [(sp_id, SP_ADDR)], process_unites=False)
    node.send(b.public_key, b"x", T0)
    node.receive_datagram(unite, A_LOCAL, SP_ADDR, T0)
    assert node.outbox == []


def test_node_hello_is_answered_with_ack_and_our_own_hello_on_a_new_or_unconfirmed_path(sp_id, a, b):
    node = make_node(a, [(sp_id, SP_ADDR)])
    hello_time = T0 - 5 * S
    hello = message(HELLO, b, a, HelloNodePeer(hello_time, b"\x01\x02\x03\x04").encode())
    node.receive_datagram(hello, A_LOCAL, B_PUBLIC, T0)
    assert [(t[1], t[2], t[3]) for t in node.outbox] == [(UDP, A_LOCAL, B_PUBLIC)] * 2
    ack_header, ack_body = opened(node.outbox[0][0], b, a)
    assert ack_header.message_type == ACK and Ack.parse(ack_body).time == hello_time
    hello_header, hello_body = opened(node.outbox[1][0], b, a)
    assert hello_header.message_type == HELLO
    assert HelloNodePeer.parse(hello_body) == (T0, node.peers[b.public_key].rx_short_id)
    assert node.peers[b.public_key].tx_short_id == b"\x01\x02\x03\x04"
    node.outbox.clear()
    # known path, our HELLO unanswered (behind NATs the first of two simultaneous punches is
    # dropped): the ACK and our HELLO again at once, not at the next tick
    newer = message(HELLO, b, a, HelloNodePeer(hello_time + S, b"\x01\x02\x03\x04").encode())
    node.receive_datagram(newer, A_LOCAL, B_PUBLIC, T0 + S)
    assert [t[0][78] for t in node.outbox] == [ACK, HELLO]
    own_hello = HelloNodePeer.parse(opened(node.outbox[1][0], b, a)[1])
    node.receive_datagram(message(ACK, b, a, Ack(own_hello.time).encode()), A_LOCAL, B_PUBLIC, T0 + S + MS)
    node.outbox.clear()
    node.receive_datagram(hello, A_LOCAL, B_PUBLIC, T0 + 2 * S)  # confirmed path: only the ACK
    assert len(node.outbox) == 1 and of_type(node.outbox, ACK)


def test_node_hello_older_than_max_age_is_not_answered(sp_id, a, b):
    node = make_node(a, [(sp_id, SP_ADDR)])  # hello_max_age 60 s
    node.receive_datagram(message(HELLO, b, a, HelloNodePeer(T0 - 60 * S - 1).encode()), A_LOCAL, B_PUBLIC, T0)
    assert node.outbox == [] and node.drops["hello_too_old"] == 1
    node.receive_datagram(message(HELLO, b, a, HelloNodePeer(T0 + 60 * S).encode()), A_LOCAL, B_PUBLIC, T0)
    assert of_type(node.outbox, ACK)  # future is fine


def test_short_id_from_hello_gives_short_header_apps_right_after_first_ack(sp_id, a, b):
    node = make_node(a, [(sp_id, SP_ADDR)])
    b_short_id = b"\x0a\x0b\x0c\x0d"
    node.receive_datagram(message(HELLO, b, a, HelloNodePeer(T0, b_short_id).encode()), A_LOCAL, B_PUBLIC, T0)
    own_hello = HelloNodePeer.parse(opened(of_type(node.outbox, HELLO)[0][0], b, a)[1])
    node.outbox.clear()
    now = T0 + 20 * MS
    node.receive_datagram(message(ACK, b, a, Ack(own_hello.time).encode()), A_LOCAL, B_PUBLIC, now)
    assert node.events and node.events[-1] == PathChanged(b.public_key, DIRECT, 20 * MS)
    node.send(b.public_key, b"short", now)  # no housekeeping tick in between
    [(data, proto, local, remote)] = node.outbox
    assert (proto, local, remote) == (UDP, A_LOCAL, B_PUBLIC)
    assert data[:4] == b_short_id and len(data) == 4 + 48 + 5
    assert open_short(bytes(data), rx_key(b, a)) == b"short"


def test_incoming_short_header_app_is_delivered_with_the_right_sender(sp_id, a, b, ids):
    c = ids["id_3"]
    node = make_node(a, [(sp_id, SP_ADDR)])
    node.send(b.public_key, b"x", T0)
    node.send(c.public_key, b"x", T0)
    sid_b = node.peers[b.public_key].rx_short_id
    sid_c = node.peers[c.public_key].rx_short_id
    node.receive_datagram(encode_short(sid_b, b"from b", tx_key(b, a)), A_LOCAL, B_PUBLIC, T0)
    node.receive_datagram(encode_short(sid_c, b"from c", tx_key(c, a)), A_LOCAL, ("192.0.2.3", 3), T0)
    assert node.inbox == [(b.public_key, b"from b"), (c.public_key, b"from c")]
    # C's short id with B's key: fails authentication, dropped
    node.receive_datagram(encode_short(sid_c, b"forged", tx_key(b, a)), A_LOCAL, B_PUBLIC, T0)
    assert len(node.inbox) == 2 and node.drops["bad_short_app"] == 1


def test_rx_short_id_is_never_none_or_the_magic_number(sp_id, a, b, monkeypatch):
    import drasyl.node.core as core_module
    draws = iter([b"\x00\x00\x00\x00", b"\x1e\x3f\x50\x01", b"okay"])
    monkeypatch.setattr(core_module.os, "urandom", lambda n: next(draws))
    node = make_node(a, [(sp_id, SP_ADDR)])
    node.send(b.public_key, b"x", T0)
    assert node.peers[b.public_key].rx_short_id == b"okay"


def test_node_hello_over_tcp_is_rejected(sp_id, a, b):
    node = make_node(a, [(sp_id, SP_ADDR)])
    assert not node.receive_tcp(sp_id.public_key, message(HELLO, b, a, HelloNodePeer(T0).encode()), T0)
    assert node.outbox == [] and node.peers == {}
    assert node.receive_tcp(sp_id.public_key, message(APP, b, a, b"relayed", hop=1), T0)
    assert node.inbox == [(b.public_key, b"relayed")]


def test_ack_on_unknown_path_is_ignored(sp_id, a, b):
    node = make_node(a, [(sp_id, SP_ADDR)])
    node.send(b.public_key, b"x", T0)
    node.receive_datagram(message(ACK, b, a, Ack(T0).encode()), A_LOCAL, B_PUBLIC, T0 + MS)
    assert node.peers[b.public_key].best is None and not node.events


# --- scenarios: relay, UNITE, hole punching, upkeep -----------------------------------------


def test_first_app_is_relayed_then_unite_punches_through_nats_to_public_addresses(net, a, b):
    node_a, node_b = two_nodes(net, a, b)
    start = net.mark()
    net.send(node_a, b.public_key, b"hello b")
    relayed = net.traffic(since=start, src=SP_ADDR, dst=B_PUBLIC, mtype=APP)
    assert len(relayed) == 1 and relayed[0][4] == 1  # hop count 1: via the SP
    assert node_b.inbox == [(a.public_key, b"hello b")]
    assert len(net.traffic(since=start, mtype=UNITE)) == 2
    # both punched the LAN endpoint (unroutable behind the NAT) and the observed address
    assert {d[3] for d in net.dropped if d[2] == A_PUBLIC} >= {B_LOCAL}
    assert node_a.peers[b.public_key].best.remote == B_PUBLIC
    assert node_b.peers[a.public_key].best.remote == A_PUBLIC
    assert PathChanged(b.public_key, DIRECT, 0) in node_a.events
    # direct at once, with B's short id
    net.send(node_a, b.public_key, b"direct")
    [data] = net.traffic(since=start, dst=B_PUBLIC, mtype="short")
    assert data[:4] == node_b.peers[a.public_key].rx_short_id
    assert node_b.inbox[-1] == (a.public_key, b"direct")
    net.send(node_b, a.public_key, b"back")
    assert node_a.inbox == [(b.public_key, b"back")]
    assert len(net.traffic(since=start, src=B_PUBLIC, dst=A_PUBLIC, mtype="short")) == 1


def test_port_changing_nat_is_punched_by_answering_hello_from_unexpected_source(net, a, b):
    node_a, node_b = two_nodes(net, a, b)
    # B's NAT uses another port towards A than towards the SP: the UNITE address is wrong
    b_to_a = ("203.0.113.2", 45555)
    net.routes[b_to_a] = (node_b, B_LOCAL)
    real_from_node = net._from_node

    def symmetric_nat(node, data, proto, local, remote):
        if node is node_b and proto == UDP and remote == A_PUBLIC:
            net.source[(id(node_b), B_LOCAL)] = b_to_a
        real_from_node(node, data, proto, local, remote)
        net.source[(id(node_b), B_LOCAL)] = B_PUBLIC

    net._from_node = symmetric_nat
    net.send(node_a, b.public_key, b"x")
    # A learned the real mapping from B's HELLO, answered it, and uses it
    assert node_a.peers[b.public_key].best.remote == b_to_a
    assert node_b.peers[a.public_key].best.remote == A_PUBLIC


def test_direct_paths_get_keepalive_hellos_while_there_is_traffic(net, a, b):
    node_a, node_b = two_nodes(net, a, b)
    make_direct(net, node_a, node_b, a, b)
    for _ in range(4):
        start = net.mark()
        net.send(node_a, b.public_key, b"traffic")
        net.advance(5)
        assert net.traffic(since=start, src=A_PUBLIC, dst=B_PUBLIC, mtype=HELLO)
        assert net.traffic(since=start, src=B_PUBLIC, dst=A_PUBLIC, mtype=ACK)
    assert node_a.peers[b.public_key].best.remote == B_PUBLIC


def test_idle_direct_path_is_cleared_after_60s_and_traffic_is_relayed_again(net, a, b):
    node_a, node_b = two_nodes(net, a, b)
    make_direct(net, node_a, node_b, a, b)
    last_app = net.now
    node_a.events.clear()
    net.run(last_app + 55 * S)
    assert node_a.peers[b.public_key].best is not None  # still within 60 s
    net.run(last_app + 65 * S)
    assert PathChanged(b.public_key, RELAYED, None) in node_a.events
    assert b.public_key not in node_a.peers  # idle and older than hello_timeout: expired too
    start = net.mark()
    net.send(node_a, b.public_key, b"again")
    [sent] = net.traffic(since=start, src=A_PUBLIC, mtype=APP)
    assert net.traffic(since=start, src=A_PUBLIC, dst=SP_ADDR, mtype=APP) == [sent]
    assert node_b.inbox[-1] == (a.public_key, b"again")


def test_failing_direct_path_stops_carrying_traffic_after_two_unanswered_intervals(net, a, b):
    node_a, node_b = two_nodes(net, a, b)
    make_direct(net, node_a, node_b, a, b)
    net.blocked = lambda proto, src, dst: {src, dst} == {A_PUBLIC, B_PUBLIC}
    first_unanswered = node_a.next_timer()
    net.send(node_a, b.public_key, b"keep active")
    net.run(first_unanswered + 5 * S)
    assert node_a.peers[b.public_key].best is not None  # one unanswered interval is tolerated
    net.send(node_a, b.public_key, b"keep active")
    net.run(first_unanswered + 10 * S)
    assert node_a.peers[b.public_key].best is None
    assert node_a.events[-1] == PathChanged(b.public_key, RELAYED, None)
    start = net.mark()
    net.send(node_a, b.public_key, b"relayed")
    assert net.traffic(since=start, dst=SP_ADDR, mtype=APP)
    assert node_b.inbox[-1] == (a.public_key, b"relayed")


def test_peer_created_by_send_expires_after_idle_timeout(sp_id, a, b):
    node = make_node(a, [(sp_id, SP_ADDR)])
    node.handle_timer(T0)
    node.send(b.public_key, b"x", T0)
    for t in range(5, 65, 5):
        node.handle_timer(T0 + t * S)
        assert b.public_key in node.peers, t
    node.handle_timer(T0 + 65 * S)
    assert b.public_key not in node.peers
    assert [r.public_key for r in node.peer_list()] == [sp_id.public_key]


def test_peer_created_by_incoming_hello_expires_after_hello_timeout(sp_id, a, b):
    node = make_node(a, [(sp_id, SP_ADDR)])
    node.handle_timer(T0)
    node.receive_datagram(message(HELLO, b, a, HelloNodePeer(T0).encode()), A_LOCAL, B_PUBLIC, T0)
    short_id = node.peers[b.public_key].rx_short_id
    node.handle_timer(T0 + 25 * S)
    assert b.public_key in node.peers
    node.handle_timer(T0 + 30 * S)
    assert b.public_key not in node.peers
    # its short id is gone too: a short-header packet with it is no longer accepted
    node.receive_datagram(encode_short(short_id, b"late", tx_key(b, a)), A_LOCAL, B_PUBLIC, T0 + 31 * S)
    assert node.inbox == []


# --- TCP fallback --------------------------------------------------------------------------


def no_udp_for_a(proto, src, dst):
    return proto == UDP and A_PUBLIC in (src, dst)


def tcp_events(node: NodeCore) -> list:
    return [e for e in node.events if isinstance(e, (OpenTcp, CloseTcp))]


def test_tcp_fallback_opens_one_interval_after_start_when_udp_gets_no_answer(net, a, sp_id):
    net.blocked = no_udp_for_a
    node_a = net.add_node(a, A_LOCAL, A_PUBLIC)
    net.run(T0 + 5 * S - 1)
    assert tcp_events(node_a) == []
    net.run(T0 + 5 * S)
    assert tcp_events(node_a) == [OpenTcp(sp_id.public_key, SP_ADDR[0], 8443)]
    net.run(T0 + 20 * S)  # no second request while the first one is pending
    assert len(tcp_events(node_a)) == 1


def test_tcp_fallback_carries_hello_and_relayed_apps_until_udp_answers(net, a, b, sp_id):
    net.blocked = no_udp_for_a
    node_a, node_b = two_nodes(net, a, b)
    net.send(node_a, b.public_key, b"queued while nothing answers")
    net.run(T0 + 5 * S)
    assert tcp_events(node_a) == [OpenTcp(sp_id.public_key, SP_ADDR[0], 8443)]
    assert node_b.inbox == []
    # the adapter connected: a HELLO goes over TCP at once, its ACK releases the queue
    connected = net.now + 100 * MS
    net.run(connected)
    start = net.mark()
    net.connect_tcp(node_a, sp_id.public_key, A_TCP)
    assert node_a.events[-1] == PathChanged(b.public_key, TCP_PATH, None)
    [tcp_hello] = net.traffic(since=start, proto=TCP, src=A_TCP, mtype=HELLO)
    assert HelloSuperPeer.parse(opened(tcp_hello, sp_id, a)[1]).time == connected
    assert net.sps[SP_ADDR].peers[a.public_key].proto == TCP
    assert node_b.inbox == [(a.public_key, b"queued while nothing answers")]
    assert len(net.traffic(since=start, proto=TCP, src=A_TCP, mtype=APP)) == 1
    # later relayed APPs go over TCP too
    net.send(node_a, b.public_key, b"over tcp")
    assert len(net.traffic(since=start, proto=TCP, src=A_TCP, mtype=APP)) == 2
    assert node_b.inbox[-1] == (a.public_key, b"over tcp")
    # and relayed APPs to A arrive over TCP
    net.send(node_b, a.public_key, b"to a")
    assert node_a.inbox == [(b.public_key, b"to a")]
    # every tick still probes UDP, and re-registers over TCP
    tick, start = node_a.next_timer(), net.mark()
    net.run(tick)
    assert len(net.traffic(since=start, proto=TCP, src=A_TCP, mtype=HELLO)) == 1
    assert [d for d in net.dropped if d[0] == tick and d[2] == A_PUBLIC and d[3] == SP_ADDR]
    # UDP to the SP comes back (not to B, so A keeps relaying): the first UDP ACK closes
    # TCP and relaying returns to UDP
    net.blocked = lambda proto, src, dst: proto == UDP and {src, dst} == {A_PUBLIC, B_PUBLIC}
    node_a.events.clear()
    tick = node_a.next_timer()
    net.run(tick)
    assert tcp_events(node_a) == [CloseTcp(sp_id.public_key)]
    assert PathChanged(b.public_key, RELAYED, None) in node_a.events
    net.close_tcp(node_a, sp_id.public_key)
    start = net.mark()
    net.send(node_a, b.public_key, b"udp again")
    assert len(net.traffic(since=start, proto=UDP, src=A_PUBLIC, dst=SP_ADDR, mtype=APP)) == 1
    assert not net.traffic(since=start, proto=TCP)
    assert node_b.inbox[-1] == (a.public_key, b"udp again")


def test_relayed_apps_reach_a_node_at_once_when_its_udp_returns(net, a, b, sp_id):
    # the tick that gets the first UDP ACK has also sent a HELLO over TCP; if that one
    # reaches the SP last, the SP would relay to A over the TCP connection A just closed
    net.blocked = no_udp_for_a
    node_a, node_b = two_nodes(net, a, b)
    net.run(T0 + 5 * S)
    net.connect_tcp(node_a, sp_id.public_key, A_TCP)
    net.blocked = lambda proto, src, dst: proto == UDP and {src, dst} == {A_PUBLIC, B_PUBLIC}
    net.run(node_a.next_timer())
    assert tcp_events(node_a)[-1] == CloseTcp(sp_id.public_key)
    net.send(node_b, a.public_key, b"right after recovery")
    assert node_a.inbox == [(b.public_key, b"right after recovery")]
    assert net.sps[SP_ADDR].peers[a.public_key].proto == UDP


def test_tcp_fallback_waits_hello_timeout_once_udp_has_worked(net, a, b, sp_id):
    node_a, _ = two_nodes(net, a, b)
    net.run(T0 + 10 * S)
    assert tcp_events(node_a) == []
    net.blocked = no_udp_for_a
    first_unanswered = node_a.next_timer()  # the first HELLO that gets no ACK
    net.run(first_unanswered + 30 * S - 1)
    assert tcp_events(node_a) == []
    net.run(first_unanswered + 30 * S)
    assert tcp_events(node_a) == [OpenTcp(sp_id.public_key, SP_ADDR[0], 8443)]


def test_enforce_tcp_opens_tcp_at_start_and_keeps_it_on_udp_ack(net, a, sp_id):
    node_a = net.add_node(a, A_LOCAL, A_PUBLIC, enforce_tcp=True)
    net.run()
    assert tcp_events(node_a) == [OpenTcp(sp_id.public_key, SP_ADDR[0], 8443)]
    net.connect_tcp(node_a, sp_id.public_key, A_TCP)
    net.advance(5)  # UDP works too, yet TCP stays
    assert tcp_events(node_a) == [OpenTcp(sp_id.public_key, SP_ADDR[0], 8443)]
    assert node_a.peer_list()[0].path == "tcp"


def test_failed_tcp_connect_is_retried_at_a_later_tick(net, a, sp_id):
    net.blocked = no_udp_for_a
    node_a = net.add_node(a, A_LOCAL, A_PUBLIC)
    net.run(T0 + 5 * S)
    assert len(tcp_events(node_a)) == 1
    node_a.tcp_closed(sp_id.public_key, net.now)  # the adapter could not connect
    net.run(T0 + 10 * S)
    assert len(tcp_events(node_a)) == 2


# --- bad input -----------------------------------------------------------------------------


def test_invalid_pow_sender_is_dropped_and_creates_no_entry(sp_id, a, b):
    bad_pow = b.proof_of_work + 1
    assert not pow_is_valid(b.public_key, bad_pow, 24)
    node = make_node(a, [(sp_id, SP_ADDR)])
    for mtype, body in ((HELLO, HelloNodePeer(T0, b"abcd").encode()), (APP, b"x")):
        node.receive_datagram(message(mtype, b, a, body, pow_=bad_pow), A_LOCAL, B_PUBLIC, T0)
    assert node.outbox == [] and node.inbox == [] and node.peers == {} and node.short_ids == {}
    assert node.drops["pow_invalid"] == 2


def test_packet_failing_authentication_creates_no_entry(sp_id, a, b):
    node = make_node(a, [(sp_id, SP_ADDR)])
    data = bytearray(message(APP, b, a, b"payload"))
    data[-1] ^= 1
    node.receive_datagram(bytes(data), A_LOCAL, B_PUBLIC, T0)
    assert node.inbox == [] and node.peers == {} and node.short_ids == {}


def test_unarmed_packets_are_dropped_when_arming_is_on(sp_id, a, b):
    node = make_node(a, [(sp_id, SP_ADDR)])
    node.handle_timer(T0)
    node.outbox.clear()
    node.receive_datagram(message(APP, b, a, b"plain", armed=False), A_LOCAL, B_PUBLIC, T0)
    node.receive_datagram(message(ACK, sp_id, a, Ack(T0).encode(), armed=False), A_LOCAL, SP_ADDR, T0)
    assert node.inbox == [] and node.drops["unarmed"] == 2
    assert node.peer_list()[0].rtt_ms is None


def test_unarmed_packets_are_accepted_when_arming_is_off(sp_id, a, b):
    node = make_node(a, [(sp_id, SP_ADDR)], arm_messages=False)
    node.receive_datagram(message(APP, b, a, b"plain", armed=False), A_LOCAL, B_PUBLIC, T0)
    assert node.inbox == [(b.public_key, b"plain")]


def test_packets_for_another_node_or_network_are_dropped(sp_id, a, b, ids):
    node = make_node(a, [(sp_id, SP_ADDR)])
    node.receive_datagram(message(APP, b, ids["id_3"], b"x"), A_LOCAL, B_PUBLIC, T0)
    node.receive_datagram(message(APP, b, a, b"x", network_id=2), A_LOCAL, B_PUBLIC, T0)
    assert node.inbox == [] and node.drops["not_for_us"] == 2


def test_payload_too_large_raises(sp_id, a, b):
    node = make_node(a, [(sp_id, SP_ADDR)])
    node.handle_timer(T0)
    node.receive_datagram(sp_ack(sp_id, a, T0), A_LOCAL, SP_ADDR, T0)
    node.outbox.clear()
    node.send(b.public_key, bytes(1345), T0)  # the largest armed long-header APP
    assert len(node.outbox[0][0]) == 1472
    with pytest.raises(PayloadTooLarge):
        node.send(b.public_key, bytes(1346), T0)
    # direct with a short id: 1420 bytes fit
    node.receive_datagram(message(HELLO, b, a, HelloNodePeer(T0, b"wxyz").encode()), A_LOCAL, B_PUBLIC, T0)
    own = HelloNodePeer.parse(opened(of_type(node.outbox, HELLO)[-1][0], b, a)[1])
    node.receive_datagram(message(ACK, b, a, Ack(own.time).encode()), A_LOCAL, B_PUBLIC, T0 + MS)
    node.outbox.clear()
    node.send(b.public_key, bytes(1420), T0 + MS)
    assert len(node.outbox[0][0]) == 1472 and node.outbox[0][0][:4] == b"wxyz"
    with pytest.raises(PayloadTooLarge):
        node.send(b.public_key, bytes(1421), T0 + MS)
    assert isinstance(PayloadTooLarge("x"), DrasylError)


def test_garbage_never_raises_from_receive_datagram(sp_id, a, b):
    node = make_node(a, [(sp_id, SP_ADDR)])
    node.handle_timer(T0)
    node.send(b.public_key, b"x", T0)
    sid = node.peers[b.public_key].rx_short_id
    valid = [
        sp_ack(sp_id, a, T0),
        message(UNITE, sp_id, a, Unite(b.public_key, encode_endpoints([B_PUBLIC])).encode()),
        message(HELLO, b, a, HelloNodePeer(T0, b"abcd").encode()),
        message(APP, b, a, b"payload"),
        encode_short(sid, b"payload", tx_key(b, a)),
    ]
    samples = [b"", b"\x00", b"\x1e\x3f\x50", sid, sid[:3], b"\x1e\x3f\x50\x01", os.urandom(3),
               os.urandom(79), os.urandom(1472), b"\x1e\x3f\x50\x01" + bytes(75), b"\xff" * 200]
    for data in valid:
        samples += [data[:n] for n in range(len(data))]
        for i in range(len(data)):
            flipped = bytearray(data)
            flipped[i] ^= 0x20
            samples.append(bytes(flipped))
    for data in samples:
        node.receive_datagram(data, A_LOCAL, SP_ADDR, T0)
        node.receive_datagram(data, A_LOCAL, B_PUBLIC, T0)
        dropped = sum(node.drops.values())
        kept = node.receive_tcp(sp_id.public_key, data, T0)
        try:
            header = parse_long_header(data)
        except DrasylError:
            header = None
        if header is None or header.recipient != a.public_key or header.network_id != 1:
            assert kept is False, data.hex()  # only the super peer can have framed this
        elif header.sender == b.public_key and header.message_type == APP:
            assert kept is True, data.hex()  # whatever B spoiled, B cannot cut our link
        if not kept:
            assert sum(node.drops.values()) == dropped + 1, data.hex()  # every close is counted
    for data in samples[:11]:
        assert node.receive_tcp(sp_id.public_key, data, T0) is False
    assert sum(node.drops.values()) > len(samples)


def test_short_id_learned_from_a_hello_survives_a_tick_until_the_peer_is_silent(sp_id, a, b):
    node = make_node(a, [(sp_id, SP_ADDR)])
    node.handle_timer(T0)
    sid = b"\x01\x02\x03\x04"
    node.receive_datagram(message(HELLO, b, a, HelloNodePeer(T0, sid).encode()), A_LOCAL, B_PUBLIC, T0 + MS)
    peer = node.peers[b.public_key]
    node.handle_timer(T0 + 5 * S)  # a tick before any ACK of ours: drasyl-rs would forget the id
    assert peer.tx_short_id == sid
    node.handle_timer(T0 + 35 * S)  # no HELLO, no ACK for longer than hello_timeout
    assert peer.tx_short_id is None


# --- clocks: monotonic timers, wall-clock timestamps (drasyl/clock.py) ----------------------

HOUR = 3600 * S


def sp_hello_times(node: NodeCore, sp: Identity, me: Identity) -> list[int]:
    return [HelloSuperPeer.parse(opened(t[0], sp, me)[1]).time for t in of_type(node.outbox, HELLO)]


def node_hello(sender: Identity, recipient: Identity, time: int, short_id: bytes = b"wxyz") -> bytes:
    return message(HELLO, sender, recipient, HelloNodePeer(time, short_id).encode())


def test_hello_timestamps_are_wall_time_and_never_decrease_across_wall_steps(sp_id, a):
    node = make_node(a, [(sp_id, SP_ADDR)])
    node.wall_offset = HOUR  # the wall clock is an hour ahead of the monotonic one
    node.handle_timer(T0)
    stamps = sp_hello_times(node, sp_id, a)
    assert stamps == [T0 + HOUR]
    node.wall_offset = 0  # NTP steps the wall clock back an hour
    for tick in range(1, 4):
        node.outbox.clear()
        node.handle_timer(T0 + tick * 5 * S)
        times = sp_hello_times(node, sp_id, a)
        assert len(times) == 1, f"no HELLO at tick {tick} after the backward step"
        stamps += times
    assert stamps == sorted(set(stamps)), stamps  # strictly increasing
    node.wall_offset = 2 * HOUR  # a forward step: wall time again, and no burst of ticks
    node.outbox.clear()
    node.handle_timer(T0 + 20 * S)
    assert sp_hello_times(node, sp_id, a) == [T0 + 20 * S + 2 * HOUR]
    node.outbox.clear()
    node.handle_timer(T0 + 20 * S + 1)
    assert node.outbox == [] and node.next_timer() == T0 + 25 * S


def test_node_hellos_of_one_tick_get_distinct_increasing_timestamps(sp_id, a, b):
    locals_ = [("10.0.0.1", 1001), ("10.0.0.2", 1001)]
    node = make_node(a, [(sp_id, SP_ADDR)], locals_)
    node.send(b.public_key, b"x", T0)
    node.outbox.clear()
    unite = message(UNITE, sp_id, a, Unite(b.public_key, encode_endpoints([B_PUBLIC, B_LOCAL])).encode())
    node.receive_datagram(unite, locals_[0], SP_ADDR, T0)
    stamps = [HelloNodePeer.parse(opened(t[0], b, a)[1]).time for t in of_type(node.outbox, HELLO)]
    assert len(stamps) == 4 and stamps == sorted(set(stamps)) and stamps[0] == T0


def test_rtt_comes_from_the_monotonic_clock_across_wall_steps(sp_id, a):
    node = make_node(a, [(sp_id, SP_ADDR)])
    node.handle_timer(T0)
    [stamp] = sp_hello_times(node, sp_id, a)
    node.wall_offset = -HOUR  # the wall clock steps back while the HELLO is in flight
    node.receive_datagram(sp_ack(sp_id, a, stamp), A_LOCAL, SP_ADDR, T0 + 20 * MS)
    node.outbox.clear()
    node.handle_timer(T0 + 5 * S)
    [stamp] = sp_hello_times(node, sp_id, a)
    node.wall_offset = HOUR  # and forward
    node.receive_datagram(sp_ack(sp_id, a, stamp), A_LOCAL, SP_ADDR, T0 + 5 * S + 30 * MS)
    assert node.super_peers[sp_id.public_key].best_udp.rtts == [20 * MS, 30 * MS]


def test_age_of_a_node_hello_is_checked_against_wall_time(sp_id, a, b):
    node = make_node(a, [(sp_id, SP_ADDR)])
    node.wall_offset = HOUR
    node.receive_datagram(node_hello(b, a, T0), A_LOCAL, B_PUBLIC, T0)  # an hour old in wall time
    assert node.outbox == [] and node.drops["hello_too_old"] == 1
    node.receive_datagram(node_hello(b, a, T0 + HOUR), A_LOCAL, B_PUBLIC, T0)
    assert sorted(t[0][78] for t in node.outbox) == [ACK, HELLO]


# --- replays and amplification -------------------------------------------------------------


def test_replayed_node_hello_from_spoofed_sources_gets_no_answer_and_no_path(sp_id, a, b):
    node = make_node(a, [(sp_id, SP_ADDR)])
    hello = node_hello(b, a, T0)
    node.receive_datagram(hello, A_LOCAL, B_PUBLIC, T0 + MS)
    assert sorted(t[0][78] for t in node.outbox) == [ACK, HELLO]  # ACK, and punch back
    node.outbox.clear()
    for i in range(20):
        node.receive_datagram(hello, A_LOCAL, ("198.51.100.%d" % (i + 100), 4000 + i), T0 + 2 * MS)
    assert node.outbox == []
    assert list(node.peers[b.public_key].paths) == [(A_LOCAL, B_PUBLIC)]
    assert node.drops["hello_replayed"] == 20


def test_hello_on_an_unconfirmed_path_gets_at_most_one_rehello_per_interval(sp_id, a, b):
    node = make_node(a, [(sp_id, SP_ADDR)])
    node.send(b.public_key, b"x", T0)
    unite = message(UNITE, sp_id, a, Unite(b.public_key, encode_endpoints([B_PUBLIC])).encode())
    node.receive_datagram(unite, A_LOCAL, SP_ADDR, T0)
    node.outbox.clear()
    hello = node_hello(b, a, T0 + MS)
    node.receive_datagram(hello, A_LOCAL, B_PUBLIC, T0 + 2 * MS)
    assert sorted(t[0][78] for t in node.outbox) == [ACK, HELLO]  # the punch race: HELLO again
    node.outbox.clear()
    for i in range(10):  # replays of it: one ACK each (no bigger than what came), no HELLO
        node.receive_datagram(hello, A_LOCAL, B_PUBLIC, T0 + 3 * MS + i)
    assert [t[0][78] for t in node.outbox] == [ACK] * 10
    assert all(len(t[0]) <= len(hello) for t in node.outbox)
    node.outbox.clear()
    node.receive_datagram(node_hello(b, a, T0 + 5 * S), A_LOCAL, B_PUBLIC, T0 + 5 * S + 2 * MS)
    assert sorted(t[0][78] for t in node.outbox) == [ACK, HELLO]


def test_an_older_hello_never_installs_its_short_id(sp_id, a, b):
    node = make_node(a, [(sp_id, SP_ADDR)])
    node.receive_datagram(node_hello(b, a, T0 + 2 * MS, b"new1"), A_LOCAL, B_PUBLIC, T0 + 3 * MS)
    peer = node.peers[b.public_key]
    node.receive_datagram(node_hello(b, a, T0 + MS, b"new1"), A_LOCAL, B_PUBLIC, T0 + 4 * MS)
    assert peer.tx_short_id == b"new1"  # a replay with the current id changes nothing
    # a replay with an old id, or B restarted with its clock set back: long headers work for both
    node.receive_datagram(node_hello(b, a, T0 + MS, b"old1"), A_LOCAL, B_PUBLIC, T0 + 5 * MS)
    assert peer.tx_short_id is None
    node.receive_datagram(node_hello(b, a, T0 + 3 * MS, b"new2"), A_LOCAL, B_PUBLIC, T0 + 6 * MS)
    assert peer.tx_short_id == b"new2"


def test_paths_per_peer_are_capped(sp_id, a, b):
    locals_ = [("10.0.0.1", 1001), ("10.0.0.2", 1001)]
    node = make_node(a, [(sp_id, SP_ADDR)], locals_)
    node.send(b.public_key, b"x", T0)
    node.outbox.clear()
    endpoints = [("203.0.113.%d" % i, 40000 + i) for i in range(1, 16)]  # 15 x 2 sockets = 30
    unite = message(UNITE, sp_id, a, Unite(b.public_key, encode_endpoints(endpoints)).encode())
    node.receive_datagram(unite, locals_[0], SP_ADDR, T0)
    peer = node.peers[b.public_key]
    assert len(peer.paths) == MAX_PATHS_PER_PEER < 30
    assert len(of_type(node.outbox, HELLO)) == MAX_PATHS_PER_PEER
    assert node.drops["path_limit"] == 30 - MAX_PATHS_PER_PEER
    for i in range(40):  # fresh HELLOs from ever new sources (a NAT that changes ports)
        src = ("198.51.100.7", 50000 + i)
        node.receive_datagram(node_hello(b, a, T0 + (i + 1) * MS), locals_[0], src, T0 + (i + 1) * MS)
        assert len(peer.paths) <= MAX_PATHS_PER_PEER
    assert (locals_[0], ("198.51.100.7", 50039)) in peer.paths  # the newest source is tried


def test_ack_must_echo_a_hello_we_sent_on_that_path(sp_id, a):
    node = make_node(a, [(sp_id, SP_ADDR)])
    node.handle_timer(T0)
    sp = node.super_peers[sp_id.public_key]
    node.receive_datagram(sp_ack(sp_id, a, T0 - 10 * MS), A_LOCAL, SP_ADDR, T0 + MS)  # never sent
    node.receive_datagram(sp_ack(sp_id, a, T0), A_LOCAL, ("192.0.2.99", 22527), T0 + MS)  # other source
    assert sp.best_udp is None and list(sp.paths) == [(A_LOCAL, SP_ADDR)]
    assert node.drops["ack_unmatched"] == 2
    node.receive_datagram(sp_ack(sp_id, a, T0), A_LOCAL, SP_ADDR, T0 + MS)
    assert sp.best_udp is not None and sp.best_udp.rtts == [MS]


# --- TCP to a super peer: cut only by the super peer, half-dead detected -----------------


def test_tcp_is_closed_only_for_frames_the_super_peer_is_to_blame_for(sp_id, a, b, ids):
    node = make_node(a, [(sp_id, SP_ADDR)], enforce_tcp=True)
    node.tcp_connected(sp_id.public_key, T0)
    sp_key = sp_id.public_key
    bad_tag = bytearray(message(APP, b, a, b"payload"))
    bad_tag[-1] ^= 1
    from_nodes = [bytes(bad_tag), message(APP, b, a, b"plain", armed=False),
                  message(APP, b, a, b"x", pow_=b.proof_of_work + 1)]
    for frame in from_nodes:  # relayed APPs a node spoiled: dropped, the link stays
        assert node.receive_tcp(sp_key, frame, T0) is True
    assert node.inbox == [] and node.peers == {}
    assert sum(node.drops.values()) == len(from_nodes)
    bad_ack = bytearray(sp_ack(sp_id, a, T0))
    bad_ack[-1] ^= 1
    from_sp = [b"\x00" * 10, message(APP, b, ids["id_3"], b"x"), message(APP, b, a, b"x", network_id=2),
               message(HELLO, b, a, HelloNodePeer(T0).encode()), bytes(bad_ack),
               message(ACK, sp_id, a, Ack(T0).encode(), armed=False)]
    for frame in from_sp:  # what only the super peer can have sent wrong: close
        assert node.receive_tcp(sp_key, frame, T0) is False
    assert node.receive_tcp(sp_key, message(APP, b, a, b"fine"), T0) is True
    assert node.inbox == [(b.public_key, b"fine")]


def test_unanswered_tcp_path_is_closed_and_reopened_after_two_intervals(net, a, b, sp_id):
    net.blocked = no_udp_for_a
    node_a, node_b = two_nodes(net, a, b)
    net.run(T0 + 5 * S)
    net.connect_tcp(node_a, sp_id.public_key, A_TCP)
    net.send(node_a, b.public_key, b"over tcp")
    assert node_b.inbox[-1] == (a.public_key, b"over tcp")
    # the connection goes half-dead: nothing comes back from the super peer
    net.blocked = lambda proto, src, dst: no_udp_for_a(proto, src, dst) or (proto == TCP and dst == A_TCP)
    node_a.events.clear()
    first_unanswered = node_a.next_timer()
    net.run(first_unanswered + 5 * S)
    assert tcp_events(node_a) == []  # one unanswered interval is tolerated
    net.run(first_unanswered + 10 * S)
    assert tcp_events(node_a) == [CloseTcp(sp_id.public_key), OpenTcp(sp_id.public_key, SP_ADDR[0], 8443)]
    assert PathChanged(b.public_key, RELAYED, None) in node_a.events
    net.close_tcp(node_a, sp_id.public_key)
    start = net.mark()
    net.send(node_a, b.public_key, b"waits for a super peer")
    assert node_a.queued == 1 and not net.traffic(since=start, proto=TCP)
    net.connect_tcp(node_a, sp_id.public_key, ("198.51.100.1", 50002))  # reopened, answers
    assert node_b.inbox[-1] == (a.public_key, b"waits for a super peer")


# --- inputs at the edges -------------------------------------------------------------------


def test_refused_payload_leaves_no_state(sp_id, a, b):
    node = make_node(a, [(sp_id, SP_ADDR)])
    with pytest.raises(PayloadTooLarge):
        node.send(b.public_key, bytes(2000), T0)
    assert node.peers == {} and node.short_ids == {} and node.outbox == []
    node.send(b.public_key, b"x", T0)
    with pytest.raises(PayloadTooLarge):
        node.send(b.public_key, bytes(2000), T0 + 50 * S)
    assert node.peers[b.public_key].app_tx == T0


def test_non_canonical_ipv6_super_peer_address_matches_the_address_acks_come_from(sp_id, a):
    local6 = ("2001:db8:a::1", 1001)
    node = NodeCore(a, [SuperPeerUrl("2001:DB8::0100", 22527, sp_id.public_key, 1, 8443)], NodeConfig(), T0)
    node.set_local_addresses([local6])
    node.set_super_peer_addresses(sp_id.public_key, [("2001:DB8::0100", 22527)])
    for tick in range(4):
        now = T0 + tick * 5 * S
        node.handle_timer(now)
        [stamp] = sp_hello_times(node, sp_id, a)
        node.outbox.clear()
        # the kernel reports the source in canonical form, with flow info and scope id
        node.receive_datagram(sp_ack(sp_id, a, stamp), local6, ("2001:db8::100", 22527, 0, 0), now + MS)
        node.set_super_peer_addresses(sp_id.public_key, [("2001:DB8::0100", 22527)])  # re-resolved
    assert tcp_events(node) == []
    assert node.peer_list()[0].path == "udp"


# --- the data path seam: send handles, batches, byte counts, reloads -----------------------


def registered(sp_id, a, **settings) -> NodeCore:
    node = make_node(a, [(sp_id, SP_ADDR)], **settings)
    node.handle_timer(T0)
    node.receive_datagram(sp_ack(sp_id, a, sp_stamp(node, sp_id)), A_LOCAL, SP_ADDR, T0 + 10 * MS)
    node.outbox.clear()
    return node


def test_send_batch_drops_oversize_payloads_by_count_and_sends_the_rest(sp_id, a, b):
    node = registered(sp_id, a)
    handle = node.handle(b.public_key, T0)
    dropped = node.send_batch([(handle, b"x" * MAX_PAYLOAD), (handle, b"y" * (MAX_PAYLOAD + 1)),
                               (handle, b"z")], T0 + S)
    assert dropped == 1 and node.drops["payload_too_large"] == 1
    assert [opened(t[0], b, a)[1] for t in node.outbox] == [b"x" * MAX_PAYLOAD, b"z"]
    assert all(len(t[0]) <= 1472 for t in node.outbox)
    assert MAX_PAYLOAD == 1345


def test_send_batch_takes_views_of_a_reused_buffer_and_encrypts_them_at_once(sp_id, a, b):
    node = registered(sp_id, a)
    handle = node.handle(b.public_key, T0)
    arena = bytearray(b"first packet")
    node.send_batch([(handle, memoryview(arena)[:5])], T0 + S)
    arena[:] = b"second reuse"  # the TUN reads the next burst into the same buffer
    [(data, *_)] = node.outbox
    assert opened(data, b, a)[1] == b"first"


def test_send_batch_uses_the_short_header_on_a_direct_path(net, a, b):
    node_a, node_b = two_nodes(net, a, b)
    net.send(node_a, b.public_key, b"punch")  # relayed; the UNITE makes the path direct
    assert node_a.peers[b.public_key].route == DIRECT
    handle = node_a.handle(b.public_key, net.now)
    start = net.mark()
    node_a.send_batch([(handle, b"one"), (handle, b"two")], net.now)
    net.deliver()
    assert len(net.traffic(since=start, dst=B_PUBLIC, mtype="short")) == 2
    assert node_b.inbox[-2:] == [(a.public_key, b"one"), (a.public_key, b"two")]


def test_a_held_peer_outlives_idle_expiry_until_released(sp_id, a, b):
    node = registered(sp_id, a)
    handle = node.handle(b.public_key, T0)
    assert node.handle(b.public_key, T0) is handle  # one entry, two holders
    for t in range(5, 125, 5):
        node.handle_timer(T0 + t * S)
    assert b.public_key in node.peers
    node.release(handle)
    node.handle_timer(T0 + 130 * S)
    assert b.public_key in node.peers  # still held once
    node.release(handle)
    node.handle_timer(T0 + 135 * S)
    assert b.public_key not in node.peers


def test_peer_list_counts_payload_bytes_both_ways_and_time_since_the_last_app(net, a, b):
    node_a, node_b = two_nodes(net, a, b)
    net.send(node_a, b.public_key, b"12345")
    net.send(node_b, a.public_key, b"123")
    [row] = [r for r in node_a.peer_list(net.now + 2 * S) if r.role == "node"]
    assert (row.bytes_out, row.bytes_in) == (5, 3)
    assert row.last_rx_s == pytest.approx(2, abs=0.01)


def test_set_super_peers_keeps_unchanged_ones_and_drops_removed_ones(sp_id, sp2_id, a, b):
    node = registered(sp_id, a)
    kept = node.super_peers[sp_id.public_key]
    node.set_super_peers([url(sp_id), url(sp2_id, SP2_ADDR)], T0 + S)
    assert node.super_peers[sp_id.public_key] is kept and kept.median is not None
    assert node.next_timer() == T0 + S  # register with the new one at once
    node.set_super_peer_addresses(sp2_id.public_key, [SP2_ADDR])
    node.set_super_peers([url(sp2_id, SP2_ADDR)], T0 + 2 * S)
    assert list(node.super_peers) == [sp2_id.public_key]
    assert node.default.public_key == sp2_id.public_key
    node.handle_timer(T0 + 2 * S)
    assert {t[3] for t in of_type(node.outbox, HELLO)} == {SP2_ADDR}


def test_set_super_peers_refuses_a_new_network_id_and_an_empty_list(sp_id, sp2_id, a):
    node = registered(sp_id, a)
    other = SuperPeerUrl(SP2_ADDR[0], SP2_ADDR[1], sp2_id.public_key, 7, 8443)
    with pytest.raises(DrasylError, match="networkId"):
        node.set_super_peers([other], T0)
    with pytest.raises(DrasylError):
        node.set_super_peers([], T0)
    assert list(node.super_peers) == [sp_id.public_key]


def test_set_super_peers_closes_the_tcp_connection_of_a_removed_super_peer(net, a, b, sp_id, sp2_id):
    node = make_node(a, [(sp_id, SP_ADDR)], enforce_tcp=True)
    node.handle_timer(T0)
    assert any(isinstance(e, OpenTcp) for e in node.events)
    node.tcp_connected(sp_id.public_key, T0 + MS)
    node.events.clear()
    node.set_super_peers([url(sp2_id, SP2_ADDR)], T0 + S)
    assert CloseTcp(sp_id.public_key) in node.events
