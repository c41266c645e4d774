"""drasyl.agent.ping without namespaces: packets (checked against RFC 1071's and a
textbook's vectors and an independent checksum), replies taken off the receive path, PEER
resolution and its refusals, and one probe through a fake node."""

from __future__ import annotations

import asyncio
import json
import random
import struct
from ipaddress import IPv4Address, IPv6Address
from types import SimpleNamespace

import pytest

from drasyl.agent.api import AgentError
from drasyl.agent.consent import Decision
from drasyl.agent.netconfig import parse_network_config
from drasyl.agent.ping import (ECHO6_REPLY, ECHO6_REQUEST, ECHO_REPLY, ECHO_REQUEST, PROTO_ICMP, Pinger, checksum,
                               echo6_packet, echo_packet, resolve)
from drasyl.agent.policy import PolicyTables, desired_state
from drasyl.node.events import PeerInfo

SRC, DST = IPv4Address("10.77.0.1"), IPv4Address("10.77.0.2")


def naive_checksum(data: bytes) -> int:
    """RFC 1071 the slow way: byte pairs, end-around carry after every addition."""
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) + (data[i + 1] if i + 1 < len(data) else 0)
        total = (total & 0xFFFF) + (total >> 16)
    return 0xFFFF - total


def test_checksum_vectors_and_an_independent_computation() -> None:
    # RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2; the checksum is its complement
    assert checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0xFFFF - 0xDDF2
    # a textbook IPv4 header (checksum field zeroed): b861
    assert checksum(bytes.fromhex("450000730000400040110000c0a80001c0a800c7")) == 0xB861
    rng = random.Random(1071)
    for length in (1, 2, 3, 20, 63, 64, 1400):
        data = rng.randbytes(length)
        assert checksum(data) == naive_checksum(data), length


def test_echo_request_fields_and_checksums() -> None:
    pkt = echo_packet(ECHO_REQUEST, SRC, DST, 0xBEEF, 7, b"tokentok")
    assert len(pkt) == 20 + 8 + 8
    version_ihl, _tos, total, ip_id, flags, ttl, proto, _sum, src, dst = struct.unpack("!BBHHHBBH4s4s", pkt[:20])
    assert (version_ihl, total, ip_id, flags, ttl, proto) == (0x45, 36, 7, 0x4000, 64, PROTO_ICMP)
    assert (IPv4Address(src), IPv4Address(dst)) == (SRC, DST)
    assert naive_checksum(pkt[:20]) == 0, "the header checksum must make the header sum to 0xffff"
    kind, code, _sum, ident, seq = struct.unpack("!BBHHH", pkt[20:28])
    assert (kind, code, ident, seq, pkt[28:]) == (ECHO_REQUEST, 0, 0xBEEF, 7, b"tokentok")
    assert naive_checksum(pkt[20:]) == 0


def reply_to(pinger: Pinger, seq: int, src: IPv4Address = DST, **changes) -> bytes:
    fields = dict(kind=ECHO_REPLY, ident=pinger.ident, token=pinger.token) | changes
    return echo_packet(fields["kind"], src, SRC, fields["ident"], seq, fields["token"])


def test_replies_are_taken_only_with_our_identifier_and_token() -> None:
    pinger = Pinger()
    assert pinger.take_reply(reply_to(pinger, 1))  # late or unknown seq: ours, consumed
    assert pinger.take_reply(bytearray(reply_to(pinger, 1)))
    assert not pinger.take_reply(reply_to(pinger, 1, ident=pinger.ident ^ 1))  # somebody's ping(8)
    assert not pinger.take_reply(reply_to(pinger, 1, token=b"\0" * 8))
    assert not pinger.take_reply(reply_to(pinger, 1, kind=ECHO_REQUEST))  # a peer pinging us
    assert not pinger.take_reply(reply_to(pinger, 1)[:30])  # truncated


class FakeNode:
    """send_batch answers at once as the peer's kernel would; peers() says the path."""

    def __init__(self, pinger: Pinger, peer: bytes, sp: bytes, path: str, answer: bool = True) -> None:
        self.pinger, self.peer, self.path, self.answer = pinger, peer, path, answer
        self.core = SimpleNamespace(default=SimpleNamespace(public_key=sp))
        self.sent: list[bytes] = []

    def send_batch(self, items) -> int:
        for _handle, pkt in items:
            self.sent.append(pkt)
            seq = struct.unpack_from("!H", pkt, 26)[0]
            if self.answer:
                asyncio.get_running_loop().call_soon(self.pinger.take_reply, reply_to(self.pinger, seq))
        return 0

    def peers(self) -> list[PeerInfo]:
        return [PeerInfo(self.peer, "node", self.path, 0.5, ("203.0.113.10", 22527))]


NET1 = """network = "10.77.0.0/24"
[[node]]
pk = "{me}"
ip = "10.77.0.1"
hostname = "alice"
groups = ["staff"]
[[node]]
pk = "{bob}"
ip = "10.77.0.2"
hostname = "bob"
groups = ["servers"]
[[policy]]
source_groups = ["staff"]
destination_groups = ["servers"]
"""
NET2 = NET1.replace("10.77", "10.78").replace('"bob"', '"bob2"').replace('"alice"', '"alice2"').split("[[policy]]")[0]
NET3 = NET1.replace("10.77", "10.79").replace('"bob"', '"bob3"').replace('"alice"', '"carol3"')


@pytest.fixture
def agent(ids):
    """An agent in net2 (first, no policy), net1 (bob allowed), net3 (not a member), net4 (refused)."""
    me, bob, carol = (ids[k].public_key for k in ("id_2", "id_3", "id_1"))
    texts = {"net2": NET2, "net1": NET1, "net3": NET3.replace("{me}", carol.hex()),
             "net4": NET1.replace("10.77", "10.80").replace('"bob"', '"bob4"')}
    entries, memberships, states = [], {}, {}
    for name, text in texts.items():
        cfg = parse_network_config(text.format(me=me.hex(), bob=bob.hex()), name)
        state = desired_state(cfg, me)
        entries.append(SimpleNamespace(key=name, config_url=f"file:///{name}.toml", disabled=False))
        memberships[name] = SimpleNamespace(config=cfg, state=state)
        if name in ("net1", "net2"):
            states[name] = state
    pinger = Pinger()
    a = SimpleNamespace(config=SimpleNamespace(networks=entries, identity=SimpleNamespace(public_key=me)),
                        memberships=memberships, handles={bob: "handle"}, pinger=pinger,
                        decision=Decision(states, {"net4": ("network 10.80.0.0/24 refused: overlaps the LAN",)}),
                        tables=PolicyTables({f"file:///{k}.toml": s for k, s in states.items()}))
    a.node = FakeNode(pinger, bob, carol, "relayed")
    a.bob, a.sp = bob, carol
    return a


@pytest.mark.parametrize("peer", ["bob", "BOB.drasyl.network", "10.77.0.2", "bob-key-8", "bob-key-64"])
def test_a_peer_by_name_ip_or_key_first_usable_network(agent, peer) -> None:
    peer = {"bob-key-8": agent.bob.hex()[:8], "bob-key-64": agent.bob.hex().upper()}.get(peer, peer)
    target = resolve(agent, peer)
    # the key is in net2 first, where no policy allows it: net1 is taken
    assert (target.pk, target.ip, target.src, target.hostname, target.network) == \
        (agent.bob, DST, SRC, "bob", "file:///net1.toml")


@pytest.mark.parametrize("peer, reason", [
    ("bob2", "cannot ping bob2 (10.78.0.2): no [[policy]] of network file:///net2.toml lets this node "
             "(groups: staff) talk to bob2 (groups: servers)"),
    ("bob3", "this node is not a member of network file:///net3.toml"),
    ("bob4", "network file:///net4.toml is not applied (network 10.80.0.0/24 refused: overlaps the LAN)"),
    ("alice", "cannot ping alice (10.77.0.1): that is this node"),
    ("nobody", "unknown peer 'nobody'"),
    ("10.77.0.9", "unknown peer"),
])
def test_refusals_name_the_reason(agent, peer, reason) -> None:
    with pytest.raises(AgentError) as caught:
        resolve(agent, peer)
    assert reason in str(caught.value)


def test_a_key_prefix_shorter_than_8_is_no_key(agent) -> None:
    with pytest.raises(AgentError, match="unknown peer"):
        resolve(agent, agent.bob.hex()[:7])


def test_a_probe_sends_an_echo_request_and_reports_the_path(agent) -> None:
    answer = asyncio.run(agent.pinger.ping(agent, "bob", 2.0))
    pkt = agent.node.sent[0]
    assert pkt[12:20] == SRC.packed + DST.packed and pkt[20] == ECHO_REQUEST
    assert answer["success"] and answer["reply"] and answer["rtt_ms"] >= 0
    bob6 = str(agent.memberships["net1"].config.node(agent.bob).ip6)
    assert answer["peer"] == {"public_key": agent.bob.hex(), "hostname": "bob", "ip": "10.77.0.2",
                              "network": "file:///net1.toml", "ip6": bob6, "family": 4}
    assert (answer["path"], answer["endpoint"], answer["via"]) == ("relayed", None, agent.sp.hex())
    agent.node.path = "direct"
    answer = asyncio.run(agent.pinger.ping(agent, "bob", 2.0))
    assert (answer["path"], answer["endpoint"], answer["via"]) == ("direct", "203.0.113.10:22527", None)
    assert struct.unpack_from("!H", agent.node.sent[1], 26)[0] == answer["seq"] != \
        struct.unpack_from("!H", pkt, 26)[0]


def test_no_reply_within_the_timeout(agent) -> None:
    agent.node.answer = False
    answer = asyncio.run(agent.pinger.ping(agent, "bob", 0.05))
    assert answer["success"] and not answer["reply"] and answer["rtt_ms"] is None
    assert not agent.pinger._waiting, "a probe that timed out must not stay registered"
    with pytest.raises(AgentError, match="at most 8 s"):
        asyncio.run(agent.pinger.ping(agent, "bob", 9))


# --- the CLI's loop, against canned API answers ------------------------------------------------

SP_HEX = "7f588b40e13c" + "0" * 52


def answer(reply: bool, path: str = "relayed") -> dict:
    return {"success": True, "seq": 1, "reply": reply, "rtt_ms": 3.21 if reply else None,
            "peer": {"public_key": "ab" * 32, "hostname": "bob", "ip": "10.77.0.2", "network": "file:///n.toml"},
            "path": path, "endpoint": "203.0.113.10:22527" if path == "direct" else None,
            "via": None if path == "direct" else SP_HEX}


def run_cli(monkeypatch, capsys, answers: list[dict], *args: str) -> tuple[int, list[str], str]:
    from drasyl.agent import cli

    requests = []
    monkeypatch.setattr(cli, "_request", lambda _args, path, body: requests.append((path, body)) or answers.pop(0))
    code = cli.main(["ping", "bob", "-i", "0.01", *args])
    out, err = capsys.readouterr()
    assert all(path == "/ping" and body["peer"] == "bob" for path, body in requests)
    return code, out.splitlines(), err


def test_cli_prints_replies_losses_path_changes_and_a_summary(monkeypatch, capsys) -> None:
    code, lines, _ = run_cli(monkeypatch, capsys, [answer(True), answer(False), answer(True, "direct")], "-c", "3")
    assert code == 0
    assert lines == [
        "pong from bob (10.77.0.2) via relayed sp 7f588b40e13c… in 3.2 ms",
        "no reply from bob (10.77.0.2) within 2 s (path: relayed)",
        "path changed: relayed sp 7f588b40e13c… -> direct 203.0.113.10:22527",
        "pong from bob (10.77.0.2) via direct 203.0.113.10:22527 in 3.2 ms",
        "bob (10.77.0.2): 3 sent, 2 received, 1 lost, rtt min/avg/max 3.2/3.2/3.2 ms",
    ]


def test_cli_exit_codes(monkeypatch, capsys) -> None:
    code, lines, _ = run_cli(monkeypatch, capsys, [answer(False)], "-c", "1", "-W", "0.5")
    assert code == 1 and lines[-1] == "bob (10.77.0.2): 1 sent, 0 received, 1 lost"
    code, lines, _ = run_cli(monkeypatch, capsys, [answer(True)] * 2, "--until-direct", "-c", "2")
    assert code == 1 and lines[-1].endswith("2 received, 0 lost, rtt min/avg/max 3.2/3.2/3.2 ms, no direct path")
    code, lines, _ = run_cli(monkeypatch, capsys, [answer(True), answer(True, "direct"), answer(True)], "--until-direct")
    assert code == 0 and len(lines) == 4 and lines[-1].endswith("direct path reached")
    code, lines, err = run_cli(monkeypatch, capsys, [{"success": False, "message": "unknown peer 'bob'"}])
    assert code == 1 and lines == [] and err == "drasyl-agent ping: unknown peer 'bob'\n"


# --- POST /ping ---------------------------------------------------------------------------------


def test_api_hands_the_probe_to_the_agent_and_refusals_back(tmp_path) -> None:
    from agent_api_server import ConfigControl, ServerThread, make_config, token_file
    from test_agent_api import TOKEN, call

    class Control(ConfigControl):
        async def ping(self, peer: str, timeout: float) -> dict:
            if peer == "nobody":
                raise AgentError("unknown peer 'nobody'")
            return answer(True) | {"asked": [peer, timeout]}

    def ping(body) -> tuple[int, dict]:
        status, _, reply = call(server, "/ping", json.dumps(body).encode(), {"Content-Type": "application/json"})
        return status, reply

    with ServerThread(Control(make_config(tmp_path)), token_file(tmp_path, TOKEN)) as server:
        assert ping({"peer": "bob", "timeout": 2}) == (200, answer(True) | {"asked": ["bob", 2.0]})
        assert ping({"peer": "nobody", "timeout": 2}) == (200, {"success": False, "message": "unknown peer 'nobody'"})
        for bad in ({"peer": "bob"}, {"peer": 1, "timeout": 2}, {"peer": "bob", "timeout": True}, ["bob"]):
            assert ping(bad)[0] == 422, bad


def test_icmpv6_echo_fields_checksum_and_reply_taken() -> None:
    src, dst = IPv6Address("fd00::1"), IPv6Address("fd00::2")
    pkt = echo6_packet(ECHO6_REQUEST, src, dst, 0xBEEF, 7, b"tokentok")
    assert len(pkt) == 40 + 8 + 8 and pkt[0] >> 4 == 6 and pkt[6] == 58 and pkt[7] == 64
    assert struct.unpack_from("!H", pkt, 4)[0] == 16 and pkt[8:24] == src.packed and pkt[24:40] == dst.packed
    pseudo = src.packed + dst.packed + struct.pack("!I3xB", 16, 58)
    assert naive_checksum(pseudo + pkt[40:]) == 0, "RFC 4443 checksum over the pseudo-header"
    pinger = Pinger()
    reply = echo6_packet(ECHO6_REPLY, dst, src, pinger.ident, 3, pinger.token)
    assert pinger.take_reply6(reply)
    assert not pinger.take_reply6(echo6_packet(ECHO6_REQUEST, dst, src, pinger.ident, 3, pinger.token))
    assert not pinger.take_reply6(echo6_packet(ECHO6_REPLY, dst, src, pinger.ident ^ 1, 3, pinger.token))


def test_an_ipv6_address_pings_over_ipv6_once_the_peer_takes_it(agent) -> None:
    bob6 = agent.memberships["net1"].config.node(agent.bob).ip6
    agent.tun, agent.ipv6 = SimpleNamespace(ipv6=True), SimpleNamespace(capable=set())
    with pytest.raises(AgentError, match="has not shown that it takes IPv6"):
        resolve(agent, str(bob6))
    agent.ipv6.capable.add(agent.bob)
    target = resolve(agent, str(bob6).upper())
    assert target.ip6 == bob6 and target.src6 == agent.decision.states["net1"].ip6
    assert resolve(agent, "bob").src6 is None, "a name pings over IPv4"
