"""A truthful status: every super peer and member state, with its reason, in `status --json`
and logged once at info (agents in namespaces, drasyl.agent.explain on real node tables).

The lab of test_agent_e2e (super peer sp, agents a and b) plus a second super peer sp2. Hole
punching is off (``DRASYL_PROCESS_UNITES=false``): a and b talk through a super peer only, so
that a super peer they do not share makes them unreachable to each other, as behind NATs that
cannot be punched. Tests run in file order and build on each other.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Iterator

import pytest
import tomlkit
from netns import Lab, require_lab_tools
from test_agent_e2e import (
    OVERLAY,
    SP2_IP,
    SP_IP,
    START_S,
    Cluster,
    _identities,
    _received,
    network_config,
    sp_url,
    wait_until,
)

from drasyl.agent.explain import (
    NO_ANSWER,
    REGISTERED,
    TCP_FALLBACK,
    UNREACHABLE,
    peer_path,
    punch_result,
    super_peer_state,
)
from drasyl.identity import Identity
from drasyl.node.events import PeerInfo

pytestmark = pytest.mark.netns

WRONG_PK = Identity.generate(0).public_key_hex  # a valid key nobody serves at sp's address
STRANGER = "cd" * 32  # a member of net3 that no policy lets a talk to


# --- the words, from peer-table rows ---------------------------------------------------------


def sp_row(path: str, rtt: float | None = None, silent: float | None = None) -> PeerInfo:
    return PeerInfo(b"\x01" * 32, "super_peer", path, rtt, None, silent_s=silent)


def test_super_peer_states_name_the_likely_causes():
    assert super_peer_state(sp_row("udp", 1.25)) == (REGISTERED, "registered over UDP, RTT 1.2 ms")
    assert super_peer_state(sp_row("tcp", 3.0, 12.4)) == (
        TCP_FALLBACK, "registered over TCP: UDP unanswered for 12 s, RTT 3.0 ms")
    state, reason = super_peer_state(sp_row("tcp", None, 9.0))  # TCP connected, nothing answered on it
    assert state == NO_ANSWER and reason.startswith("no answer over UDP for 9 s nor over TCP (connected): ")
    state, reason = super_peer_state(sp_row("none", silent=35.2))
    assert state == NO_ANSWER and reason.startswith("no answer for 35 s: ")
    assert "publicKey or networkId" in reason and "UDP" in reason and "down" in reason


def node_row(path: str, tx: float | None = None, rx: float | None = None, unite: float | None = None) -> PeerInfo:
    return PeerInfo(b"\x02" * 32, "node", path, None, None, last_rx_s=rx, app_tx_s=tx, unite_s=unite)


def test_peer_paths_and_their_reasons():
    relay = "5b" * 32
    assert peer_path(None, False, relay, True).reason.startswith("no [[policy]]")
    assert peer_path(node_row("relayed"), True, relay, False).state == UNREACHABLE
    assert peer_path(node_row("relayed", tx=1.0, rx=0.9), True, relay, True).state == "relayed"
    silent = peer_path(node_row("relayed", tx=1.0, rx=None), True, relay, True)
    assert silent.state == UNREACHABLE and "no common super peer" in silent.reason and silent.via == relay
    assert peer_path(node_row("direct", tx=1.0), True, relay, False).state == "direct"
    assert punch_result(node_row("relayed", unite=3)) == "trying"
    assert punch_result(node_row("relayed", unite=30)).startswith("no direct path")
    assert punch_result(node_row("direct", unite=30)) == "direct"


# --- in namespaces ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(ids, tmp_path_factory) -> Iterator[Cluster]:
    require_lab_tools()
    with Lab() as lab:
        c = Cluster(lab, tmp_path_factory.mktemp("states"), _identities(ids))
        try:
            sp2_ns = lab.namespace("sp2")
            c.link(sp2_ns, SP2_IP, 25)
            c.sp2_id = Identity.generate(0)
            sp2 = c.start_super_peer(sp2_ns, "sp2", c.sp2_id, DRASYL_MIN_POW_DIFFICULTY="0")
            sp2.wait_for_line(r"^Super peer listening on:$", START_S)
            for agent in c.agents.values():
                agent.start(DRASYL_PROCESS_UNITES="false")
            yield c
        finally:
            c.close()


def set_super_peers(agent, urls: list[str]) -> None:
    doc = tomlkit.parse(agent.config.read_text())
    doc["super_peers"] = urls
    agent.config.write_text(tomlkit.dumps(doc))
    mark = agent.proc.mark()
    os.kill(agent.proc.pid, signal.SIGHUP)
    agent.proc.wait_for_line(r"Reload: super peers now", 10, since=mark)


def log_count(agent, pattern: str) -> int:
    return sum(1 for line in agent.proc.stdout.lines if re.search(pattern, line.text))


def wait_logged(cluster, agent, pattern: str, timeout: float = 20) -> None:
    wait_until(lambda: log_count(agent, pattern) >= 1, timeout, f"{agent.name} logs {pattern!r}", cluster.describe)


def super_peer(agent, pk: str) -> dict:
    return next(sp for sp in agent.status()["super_peers"] if sp["public_key"] == pk)


def peer(agent, pk: str) -> dict | None:
    return next((p for p in agent.status()["peers"] if p["public_key"] == pk), None)


def test_registered_super_peer_and_relayed_peer(cluster):
    a = cluster.agents["a"]
    sp_pk, b_pk = cluster.ids["sp"].public_key_hex, cluster.ids["b"].public_key_hex
    wait_until(lambda: super_peer(a, sp_pk)["state"] == REGISTERED, 15, "a registered", cluster.describe)
    assert super_peer(a, sp_pk)["reason"].startswith("registered over UDP, RTT ")
    wait_logged(cluster, a, rf"Super peer {sp_pk[:12]}… \({SP_IP}:22527\): registered over UDP")
    assert _received(a.ping(OVERLAY["b"])) == 3
    row = peer(a, b_pk)
    assert (row["path"], row["via"], row["reason"]) == ("relayed", sp_pk, None), row
    wait_logged(cluster, a, rf"Peer bob \({OVERLAY['b']}\): relayed via super peer {sp_pk[:12]}…")


def test_a_wrong_public_key_is_no_answer_with_its_causes(cluster):
    a = cluster.agents["a"]
    set_super_peers(a, [cluster.sp_urls[0], f"udp://{SP_IP}:22527?publicKey={WRONG_PK}&networkId=1&tcpPort=8443"])
    wait_until(lambda: (super_peer(a, WRONG_PK)["unanswered_s"] or 0) >= 5, 20, "wrong key silent", cluster.describe)
    wrong = super_peer(a, WRONG_PK)
    assert wrong["state"] == NO_ANSWER and wrong["transport"] is None
    assert "wrong publicKey or networkId" in wrong["reason"], wrong
    wait_logged(cluster, a, rf"Super peer {WRONG_PK[:12]}… .*: no answer for \d+ s: a wrong publicKey")
    human = a.cli("status").stdout
    assert "no answer" in human and "wrong publicKey or networkId" in human
    set_super_peers(a, [cluster.sp_urls[0]])


def test_a_peer_no_policy_allows_is_unreachable_and_a_disabled_network_is_gone(cluster):
    a = cluster.agents["a"]
    text = network_config(cluster.ids, "10.79.0.0/24", {"a": "10.79.0.1", "b": "10.79.0.2"},
                          {"a": "x", "b": "x"}, suffix="3",
                          extra=f'[[node]]\npk = "{STRANGER}"\nip = "10.79.0.9"\nhostname = "stranger"\n'
                                f'groups = ["y"]\n[[policy]]\nsource_groups = ["x"]\ndestination_groups = ["x"]\n')
    cluster.write_net("net3", text)
    a.cli("add", cluster.net_url("net3"))
    a.wait_network("net3", "active")
    row = wait_until(lambda: peer(a, STRANGER), 10, "stranger listed", cluster.describe)
    assert (row["path"], row["cause"]) == (UNREACHABLE, "policy") and row["reason"].startswith("no [[policy]]"), row
    assert row["hostname"] == "stranger" and row["network"] is not None
    wait_logged(cluster, a, r"Peer stranger \(10\.79\.0\.9\): unreachable: no \[\[policy\]\]")
    a.cli("disable", cluster.net_url("net3"))
    wait_until(lambda: peer(a, STRANGER) is None, 10, "a disabled network's members leave status", cluster.describe)
    assert peer(a, cluster.ids["b"].public_key_hex)["path"] == "relayed"  # still in net1
    a.cli("remove", cluster.net_url("net3"))


def test_no_common_super_peer_is_unreachable_not_relayed(cluster):
    a, b = cluster.agents["a"], cluster.agents["b"]
    b_pk, sp_pk = cluster.ids["b"].public_key_hex, cluster.ids["sp"].public_key_hex
    set_super_peers(b, [sp_url(SP2_IP, cluster.sp2_id)])
    wait_until(lambda: super_peer(b, cluster.sp2_id.public_key_hex)["state"] == REGISTERED, 15, "b on sp2",
               cluster.describe)

    def unreachable():
        a.ping(OVERLAY["b"], count=1)
        row = peer(a, b_pk)
        return row if row["path"] == UNREACHABLE else None
    row = wait_until(unreachable, 30, "a sees b unreachable", cluster.describe)
    assert row["cause"] == "no answer" and "no common super peer" in row["reason"] and row["via"] == sp_pk, row
    wait_logged(cluster, a, r"Peer bob \(10\.77\.0\.2\): unreachable: no answer through the super peer")
    b.proc.stop()  # back to sp: a restart (sp's key may sit in b's peer table as a node by now)
    doc = tomlkit.parse(b.config.read_text())
    doc["super_peers"] = [cluster.sp_urls[0]]
    b.config.write_text(tomlkit.dumps(doc))
    b.start(DRASYL_PROCESS_UNITES="false")
    wait_until(lambda: _received(a.ping(OVERLAY["b"], count=1)) == 1, 20, "b back on sp", cluster.describe)
    wait_until(lambda: peer(a, b_pk)["path"] == "relayed", 10, "b relayed again", cluster.describe)


def test_each_change_was_logged_once(cluster):
    a = cluster.agents["a"]
    sp_pk = cluster.ids["sp"].public_key_hex
    for pattern in (rf"Super peer {WRONG_PK[:12]}… .*: no answer for",
                    rf"Super peer {sp_pk[:12]}… .*: registered over UDP",
                    r"Peer stranger \(10\.79\.0\.9\): unreachable",
                    r"Peer bob \(10\.77\.0\.2\): unreachable: no answer"):
        assert log_count(a, pattern) == 1, (pattern, [l.text for l in a.proc.stdout.lines if "Peer" in l.text][-20:])


def test_a_wrong_network_id_is_no_answer_with_its_causes(cluster):
    a = cluster.agents["a"]
    sp_pk = cluster.ids["sp"].public_key_hex
    a.proc.stop()
    doc = tomlkit.parse(a.config.read_text())
    doc["super_peers"] = [cluster.sp_urls[0].replace("networkId=1", "networkId=2")]
    a.config.write_text(tomlkit.dumps(doc))
    a.start(DRASYL_PROCESS_UNITES="false")
    try:
        wait_until(lambda: (super_peer(a, sp_pk)["unanswered_s"] or 0) >= 8, 25, "a unanswered", cluster.describe)
        sp = super_peer(a, sp_pk)
        assert sp["state"] == NO_ANSWER and "wrong publicKey or networkId" in sp["reason"], sp
        wait_logged(cluster, a, rf"Super peer {sp_pk[:12]}… .*: no answer .*a wrong publicKey or networkId")
        assert log_count(a, rf"Super peer {sp_pk[:12]}…") == 1, "one line, not one per HELLO"
    finally:
        a.proc.stop()
        doc["super_peers"] = [cluster.sp_urls[0]]
        a.config.write_text(tomlkit.dumps(doc))


def test_udp_blocked_falls_back_to_tcp_and_says_so(cluster):
    a = cluster.agents["a"]
    if a.proc.popen.poll() is None:  # run alone (-k): the fixture's agent is still up; a fresh start is wanted
        a.proc.stop()
    sp_pk = cluster.ids["sp"].public_key_hex
    cluster.lab.nft(a.ns, "table inet block {\n chain out {\n type filter hook output priority 0;\n"
                          f" ip daddr {SP_IP} udp dport 22527 drop\n }}\n}}\n")
    a.start(DRASYL_PROCESS_UNITES="false")
    wait_until(lambda: super_peer(a, sp_pk)["state"] == TCP_FALLBACK, 30, "a on TCP", cluster.describe)
    assert super_peer(a, sp_pk)["reason"].startswith("registered over TCP: UDP unanswered for "), super_peer(a, sp_pk)
    wait_logged(cluster, a, rf"Super peer {sp_pk[:12]}… .*: registered over TCP: UDP unanswered")
    assert _received(a.ping(OVERLAY["b"])) == 3
    assert peer(a, cluster.ids["b"].public_key_hex)["path"] == "tcp"
    assert log_count(a, rf"Super peer {sp_pk[:12]}… .*: registered over") == 1  # this process: TCP only
