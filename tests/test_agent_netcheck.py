"""``drasyl-agent netcheck`` in the NAT lab: the symmetric side is called symmetric, the cone side not.

One topology for the module (:mod:`natlab`): our super peers sp1 198.51.100.10 and sp2
198.51.100.11 (both answer STUN), agent a behind a ``cone`` router (WAN 198.51.100.21) and b
behind a ``symmetric`` one (WAN 198.51.100.22), started once; the tests then change a's
router or firewall and undo it. The last test swaps sp2 for drasyl-rs' super peer (same
identity, so the agents' config stays), which does not answer STUN (``interop``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
from natlab import Agent, NatLab, SuperPeer, wait_until
from netns import Lab, python_env, require_lab_tools

from drasyl.agent.netcheck import ENDPOINT_DEPENDENT, ENDPOINT_INDEPENDENT, NO_STUN_NOTE, UNKNOWN
from drasyl.identity import Identity

pytestmark = pytest.mark.netns

REGISTER_S = 30.0
SETTLE_S = 20.0  # a blocked path noticed: the next HELLO (every 5 s) unanswered for 1 s


@pytest.fixture(scope="module")
def net(ids, tmp_path_factory) -> Iterator[NatLab]:
    require_lab_tools()
    with Lab() as lab:
        yield NatLab(lab, tmp_path_factory.mktemp("netcheck"), {"a": ids["id_1"], "b": ids["id_2"]},
                     [Identity.generate(0), Identity.generate(0)])


@pytest.fixture(scope="module")
def lab_up(net: NatLab) -> tuple[list[SuperPeer], Agent, Agent]:
    net.reset({"a": "cone", "b": "symmetric"})
    sps = [net.super_peer("py", 0), net.super_peer("py", 1)]
    for sp in sps:
        sp.start()
    a, b = net.agents["a"], net.agents["b"]
    for agent in (a, b):
        agent.start([sp.url() for sp in sps], net.network_url)
    for agent in (a, b):
        for sp in sps:
            wait_until(f"{agent.name} registered with {sp.name} over UDP",
                       lambda: agent.super_peer_transport(sp) == "udp", REGISTER_S, net.describe)
    return sps, a, b


def netcheck(agent: Agent, json_output: bool = True) -> tuple[int, dict | str]:
    result = subprocess.run(["ip", "netns", "exec", agent.ns, sys.executable, "-m", "drasyl.agent", "netcheck",
                             *(["--json"] if json_output else []), *agent.client_args()],
                            capture_output=True, text=True, timeout=30, env=python_env(**agent._env()))
    assert not result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout) if json_output else result.stdout


def rows(report: dict) -> dict[str, dict]:
    return {r["public_key"]: r for r in report["super_peers"]}


def test_cone_is_endpoint_independent_and_symmetric_is_endpoint_dependent(net, lab_up):
    sps, a, b = lab_up
    code, report = netcheck(a)
    assert code == 0 and report["ok"], report
    mapping = report["mapping"]["4"]
    assert mapping["verdict"] == ENDPOINT_INDEPENDENT, report
    assert len(mapping["mapped"]) == 2 and all(m.startswith(f"{a.router.wan_ip}:") for m in mapping["mapped"])
    assert mapping["local"].startswith(f"{a.lan_ip}:")
    assert any(e.startswith(f"{a.lan_ip}:") for e in report["endpoints"]), report
    assert report["duration_s"] < 5

    code, report_b = netcheck(b)
    assert code == 0 and report_b["mapping"]["4"]["verdict"] == ENDPOINT_DEPENDENT, report_b
    assert all(m.startswith(f"{b.router.wan_ip}:") for m in report_b["mapping"]["4"]["mapped"])
    assert "symmetric NAT" in report_b["direct_paths"]

    for r in (report, report_b):
        by_key = rows(r)
        for sp in sps:
            row = by_key[sp.public_key_hex]
            assert row["udp"]["reachable"] and row["udp"]["registered"] and row["udp"]["stun"], r
            assert row["udp"]["rtt_ms"] is not None and row["udp"]["stun_rtt_ms"] is not None
            assert row["tcp"]["reachable"] and row["tcp"]["rtt_ms"] is not None, r
            assert row["note"] is None

    code, text = netcheck(b, json_output=False)
    assert code == 0 and "IPv4 mapping: endpoint-dependent mapping (symmetric NAT)" in text, text
    code, text = netcheck(a, json_output=False)
    assert "cone-like" in text and "symmetric" not in text, text


def test_udp_blocked_leaves_tcp(net, lab_up):
    sps, a, _ = lab_up
    a.router.set_mode("udp-blocked")
    try:
        def udp_gone() -> dict | None:
            code, report = netcheck(a)
            return report if not any(r["udp"]["reachable"] for r in report["super_peers"]) else None

        report = wait_until("a's netcheck: UDP unreachable", udp_gone, SETTLE_S, net.describe, interval=1.0)
        assert report["ok"] and "UDP to the super peers is blocked" in report["direct_paths"]
        for row in report["super_peers"]:
            assert row["udp"]["stun"] is False and row["tcp"]["reachable"], report
        assert report["mapping"]["4"]["verdict"] == UNKNOWN
    finally:
        a.router.set_mode("cone")


def test_exit_1_when_no_super_peer_answers(net, lab_up):
    _, a, _ = lab_up
    net.lab.nft(a.ns, "table inet netcheck_block {\n chain out {\n"
                      "  type filter hook output priority filter; policy accept;\n"
                      "  ip daddr 198.51.100.0/24 drop\n  ip6 daddr 2001:db8::/64 drop\n }\n}\n")
    try:
        code, report = netcheck(a)
        assert code == 1 and not report["ok"], report
        assert not any(r["tcp"]["reachable"] or r["udp"]["stun"] for r in report["super_peers"])
        code, text = netcheck(a, json_output=False)
        assert code == 1 and "No super peer answered." in text
    finally:
        net.lab.exec(a.ns, "nft", "delete", "table", "inet", "netcheck_block")


@pytest.mark.interop
def test_drasyl_rs_super_peer_leaves_the_mapping_unknown(net, lab_up):
    sps, a, _ = lab_up
    sps[1].stop()
    net.lab.exec(sps[1].ns, "nft", "delete", "table", "inet", "natlab_sp")
    rs = net.super_peer("rs", 1)  # same identity: the agents' configuration stays valid
    rs.start()
    wait_until("a registered with drasyl-rs' super peer", lambda: rs.registered(a.pk, "udp"), REGISTER_S,
               net.describe)

    def answered() -> dict | None:
        report = netcheck(a)[1]
        return report if rows(report)[rs.public_key_hex]["udp"]["registered"] else None

    report = wait_until("a's netcheck: registered with drasyl-rs' super peer", answered, REGISTER_S, net.describe,
                        interval=1.0)
    row = rows(report)[rs.public_key_hex]
    assert row["udp"]["stun"] is False and row["udp"]["reachable"] and row["note"] == NO_STUN_NOTE, report
    assert rows(report)[sps[0].public_key_hex]["udp"]["stun"] is True
    assert report["mapping"]["4"]["verdict"] == UNKNOWN
    assert "cannot tell (one destination)" in report["mapping"]["4"]["summary"]
