"""Birthday probing through one symmetric NAT (drasyl.node.probing) on a fake clock.

The NAT lab (test_nat_lab.py scenario 10) shows it end to end through real nftables NATs; here
the core's side of it is pinned down: how STUN answers decide our role, the bounds of a
session (pacing, counts, back-off), which sockets it asks for and gives back, and that the
HELLO which meets an open mapping becomes a direct path found by "probe".
"""

from __future__ import annotations

from test_node_core import SP2_ADDR, SP_ADDR, S, T0, a, b, make_node, message, of_type, opened, sp2_id, sp_id  # noqa: F401

from drasyl.messages import ACK, HELLO, UNITE, Ack, HelloNodePeer, Unite, encode_endpoints
from drasyl.node import probing
from drasyl.node.events import CloseProbeSockets, OpenProbeSockets
from drasyl.node.probing import EASY, HARD, MappingObserver, ProbeSession
from drasyl.stun import binding_response

LOCAL = ("10.0.0.1", 1001)
PEER_PUBLIC = ("203.0.113.2", 40002)
SP_A, SP_B = b"\x01" * 32, b"\x02" * 32


def answer(obs: MappingObserver, request: bytes, public: tuple[str, int]) -> bytes:
    return binding_response(request[8:20], public)


def observe(obs: MappingObserver, sp: bytes, sp_addr, public, now: int = T0) -> bool:
    request = obs.requests(now, sp, LOCAL, sp_addr)
    assert request is not None
    return obs.on_datagram(answer(obs, request, public), LOCAL, sp_addr)


def test_role_from_the_ports_two_super_peers_see():
    same = MappingObserver()
    assert observe(same, SP_A, SP_ADDR, ("198.51.100.1", 40001))
    assert same.role(LOCAL) is None  # one destination tells nothing about the mapping
    assert observe(same, SP_B, SP2_ADDR, ("198.51.100.1", 40001))
    assert same.role(LOCAL) == EASY
    differ = MappingObserver()
    observe(differ, SP_A, SP_ADDR, ("198.51.100.1", 40001))
    observe(differ, SP_B, SP2_ADDR, ("198.51.100.1", 51234))
    assert differ.role(LOCAL) == HARD
    public = MappingObserver()
    observe(public, SP_A, SP_ADDR, LOCAL)  # the super peer sees our own address: no NAT
    assert public.role(LOCAL) == EASY


def test_stun_answers_that_are_not_ours_are_not_taken():
    obs = MappingObserver()
    request = obs.requests(T0, SP_A, LOCAL, SP_ADDR)
    good = answer(obs, request, ("198.51.100.1", 40001))
    assert not obs.on_datagram(good, ("10.0.0.2", 1001), SP_ADDR)  # another socket asked nothing
    assert not obs.on_datagram(binding_response(b"\x07" * 12, ("198.51.100.1", 1)), LOCAL, SP_ADDR)
    assert not obs.on_datagram(b"\x01\x01" + b"\x00" * 30, LOCAL, SP_ADDR)
    assert obs.on_datagram(good, LOCAL, SP_ADDR)
    assert not obs.on_datagram(good, LOCAL, SP_ADDR)  # answered once


def test_stun_asks_once_per_interval_and_rarely_after_three_silent_tries():
    obs = MappingObserver()
    assert obs.requests(T0, SP_A, LOCAL, SP_ADDR) is not None
    assert obs.requests(T0 + probing.STUN_INTERVAL_US - 1, SP_A, LOCAL, SP_ADDR) is None
    now = T0
    for _ in range(probing.STUN_GIVE_UP):
        now += probing.STUN_INTERVAL_US
        assert obs.requests(now, SP_A, LOCAL, SP_ADDR) is not None
    assert obs.unanswered[SP_A] == probing.STUN_GIVE_UP  # a drasyl-rs super peer: no STUN
    assert obs.requests(now + probing.STUN_INTERVAL_US, SP_A, LOCAL, SP_ADDR) is None
    assert obs.requests(now + probing.STUN_QUIET_US, SP_A, LOCAL, SP_ADDR) is not None


def test_easy_side_waits_for_the_hard_side_then_paces_distinct_random_ports():
    import random
    s = ProbeSession(object(), EASY, ("203.0.113.2", 0), LOCAL, T0, random.Random(1))
    assert s.due(T0 + probing.EASY_DELAY_US - 1) == []
    begin = T0 + probing.EASY_DELAY_US
    first_second = s.due(begin + S - 1)
    assert len(first_second) == probing.PROBE_PPS  # 100 per second, no burst
    sent = list(first_second)
    now = begin + S
    while (t := s.next_send()) is not None:
        now = max(now, t)
        sent += s.due(now)
    assert len(sent) == probing.EASY_PROBES
    ports = [remote[1] for _, remote in sent]
    assert len(set(ports)) == len(ports) and all(probing.PORTS[0] <= p <= probing.PORTS[1] for p in ports)
    assert {remote[0] for _, remote in sent} == {"203.0.113.2"} and {local for local, _ in sent} == {LOCAL}
    assert now - begin <= probing.EASY_PROBES * S // probing.PROBE_PPS


def test_hard_side_sends_from_each_socket_in_rounds():
    import random
    s = ProbeSession(object(), HARD, PEER_PUBLIC, LOCAL, T0, random.Random(1))
    assert s.due(T0 + S) == [] and s.next_send() is None  # no sockets yet
    sockets = [("10.0.0.1", 30000 + i) for i in range(probing.HARD_SOCKETS)]
    s.sockets, s.next_round = sockets, T0
    sent, now = [], T0
    while (t := s.next_send()) is not None:
        now = max(now, t)
        sent += s.due(now)
    assert len(sent) == probing.HARD_SOCKETS * probing.HARD_ROUNDS
    assert sorted(sent[:probing.HARD_SOCKETS]) == sorted((sock, PEER_PUBLIC) for sock in sockets)
    assert sent[:probing.HARD_SOCKETS] == sent[probing.HARD_SOCKETS:]


def test_backoff_doubles_up_to_a_limit():
    assert [probing.backoff(n) for n in (1, 2, 3)] == [probing.BACKOFF_US, 2 * probing.BACKOFF_US,
                                                       4 * probing.BACKOFF_US]
    assert probing.backoff(40) == probing.BACKOFF_MAX_US


# --- the core ---------------------------------------------------------------------------------


def hard_node(sp_id, sp2_id, a):
    """A node whose two super peers see different public ports: behind a symmetric NAT."""
    node = make_node(a, [(sp_id, SP_ADDR), (sp2_id, SP2_ADDR)])
    node.handle_timer(T0)
    for sp, addr, port in ((sp_id, SP_ADDR, 40001), (sp2_id, SP2_ADDR, 47777)):
        [stun] = [t for t in node.outbox if t[3] == addr and t[0][:2] == b"\x00\x01"]
        node.receive_datagram(binding_response(stun[0][8:20], ("198.51.100.1", port)), LOCAL, addr, T0)
        hello = next(t for t in of_type(node.outbox, HELLO) if t[3] == addr)
        stamp = opened(hello[0], sp, a)[1][:8]
        node.receive_datagram(message(ACK, sp, a, Ack(int.from_bytes(stamp, "big")).encode()), LOCAL, addr, T0 + 1000)
    node.outbox.clear()
    assert node.nat_role() == HARD
    return node


def test_hard_side_probes_after_a_failed_punch_and_keeps_only_the_winning_socket(sp_id, sp2_id, a, b):
    node = hard_node(sp_id, sp2_id, a)
    node.send(b.public_key, b"wants the peer", T0 + S)
    unite = message(UNITE, sp_id, a, Unite(b.public_key, encode_endpoints([("10.1.0.1", 1002), PEER_PUBLIC])).encode())
    node.receive_datagram(unite, LOCAL, SP_ADDR, T0 + S)
    assert node.next_timer() == T0 + S + probing.START_AFTER_US  # the punch gets its chance first
    node.handle_timer(T0 + S + probing.START_AFTER_US - 1)
    assert not any(isinstance(e, OpenProbeSockets) for e in node.events)
    start = T0 + S + probing.START_AFTER_US
    node.handle_timer(start)
    assert OpenProbeSockets(LOCAL[0], probing.HARD_SOCKETS) in node.events
    sockets = [("10.0.0.1", 30000 + i) for i in range(probing.HARD_SOCKETS)]
    node.outbox.clear()
    node.probe_sockets_opened(sockets, start)
    node.handle_timer(start)
    assert [(t[2], t[3]) for t in node.outbox] == [(sockets[0], PEER_PUBLIC)]
    node.handle_timer(start + S)
    hellos = [t for t in of_type(node.outbox, HELLO) if t[2] in sockets]  # the tick's HELLOs aside
    assert len(hellos) == probing.PROBE_PPS + 1 and {t[3] for t in hellos} == {PEER_PUBLIC}
    # the easy side's probe meets socket 42's mapping: its HELLO arrives there
    winner = sockets[42]
    now = start + S + 1000
    hello = message(HELLO, b, a, HelloNodePeer(now, b"\x09\x09\x09\x09").encode())
    node.outbox.clear()
    node.receive_datagram(hello, winner, PEER_PUBLIC, now)
    path = node.peers[b.public_key].paths[(winner, PEER_PUBLIC)]
    assert path.origin == "probe"
    ours = [t for t in of_type(node.outbox, HELLO) if t[2] == winner]
    assert ours, "no HELLO of ours on the meeting socket"
    stamp = HelloNodePeer.parse(opened(ours[0][0], b, a)[1]).time
    node.receive_datagram(message(ACK, b, a, Ack(stamp).encode()), winner, PEER_PUBLIC, now + 2000)
    assert node.peers[b.public_key].best is path
    node.events.clear()
    node.handle_timer(now + 3000)
    [closed] = [e for e in node.events if isinstance(e, CloseProbeSockets)]
    assert set(closed.locals) == set(sockets) - {winner}
    assert node.probe is None and node.probe_locals == {winner} and node.probe_stats["won"] == 1
    row = next(r for r in node.peer_list() if r.public_key == b.public_key)
    assert (row.path, row.via) == ("direct", "probe")


def test_no_probing_without_traffic_or_with_probing_off(sp_id, sp2_id, a, b):
    node = hard_node(sp_id, sp2_id, a)
    node.send(b.public_key, b"once", T0 + S)
    unite = message(UNITE, sp_id, a, Unite(b.public_key, encode_endpoints([PEER_PUBLIC])).encode())
    late = T0 + S + probing.ACTIVE_US + 1  # the last APP is older than ACTIVE_US
    node.receive_datagram(unite, LOCAL, SP_ADDR, late)
    node.handle_timer(late + probing.START_AFTER_US)
    assert node.probe is None and not any(isinstance(e, OpenProbeSockets) for e in node.events)
    off = make_node(a, [(sp_id, SP_ADDR), (sp2_id, SP2_ADDR)], probing=False)
    off.handle_timer(T0)
    assert all(t[0][:4] == b"\x1e\x3f\x50\x01" for t in off.outbox), "STUN sent with probing off"


def test_a_failed_session_backs_off_and_closes_every_socket(sp_id, sp2_id, a, b):
    node = hard_node(sp_id, sp2_id, a)
    now = T0 + S
    node.send(b.public_key, b"x", now)
    node.receive_datagram(message(UNITE, sp_id, a, Unite(b.public_key, encode_endpoints([PEER_PUBLIC])).encode()),
                          LOCAL, SP_ADDR, now)
    start = now + probing.START_AFTER_US
    node.handle_timer(start)
    sockets = [("10.0.0.1", 30000 + i) for i in range(4)]
    node.probe_sockets_opened(sockets, start)
    node.send(b.public_key, b"still wanted", start + probing.SESSION_US - S)
    node.events.clear()
    node.handle_timer(start + probing.SESSION_US)
    [closed] = [e for e in node.events if isinstance(e, CloseProbeSockets)]
    assert set(closed.locals) == set(sockets) and node.probe_locals == set()
    peer = node.peers[b.public_key]
    assert peer.probe_tries == 1 and peer.probe_not_before == start + probing.SESSION_US + probing.BACKOFF_US
    node.handle_timer(peer.probe_not_before - 1)
    assert node.probe is None  # not before the back-off ends, even with traffic
