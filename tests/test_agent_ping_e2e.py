"""``drasyl-agent ping`` against real agents: the lab of ``test_agent_e2e`` (super peer,
agents a and b behind a router without NAT, net1 between them; net2 has both as members
and no policy). The router drops UDP between a and b until the ``--until-direct`` test, so
the path is relayed first; the agents say HELLO every second so that it turns direct soon
after. The agent sends the probes; the CLI in a's namespace prints what it says."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator

import pytest
from netns import Lab, python_env, require_lab_tools
from test_agent_e2e import AGENT_IPS, API, DENIED, OVERLAY, Cluster, _identities, show_on_failure  # noqa: F401

pytestmark = pytest.mark.netns

BLOCK = f"""table inet pingtest {{
    chain forward {{
        type filter hook forward priority 0;
        ip saddr {AGENT_IPS['a']} ip daddr {AGENT_IPS['b']} drop
        ip saddr {AGENT_IPS['b']} ip daddr {AGENT_IPS['a']} drop
    }}
}}
"""
RELAYED = re.compile(r" via relayed sp 7f588b40e13c… in ")  # the lab's super peer (vector id_1)
PONG = re.compile(r"^pong from bob \(10\.77\.0\.2\) via (direct \S+|relayed sp [0-9a-f]{12}…) in \d+\.\d ms$")


@pytest.fixture(scope="module")
def cluster(ids, tmp_path_factory) -> Iterator[Cluster]:
    require_lab_tools()
    with Lab() as lab:
        c = Cluster(lab, tmp_path_factory.mktemp("ping"), _identities(ids))
        try:
            lab.nft(c.rt, BLOCK)
            for agent in c.agents.values():
                agent.start(DRASYL_HOUSEKEEPING_INTERVAL="1000")
            for agent in c.agents.values():
                agent.wait_network("net1", "active")
            yield c
        finally:
            c.close()


def pongs(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("pong ")]


def test_ping_by_name_prints_one_pong_per_reply_with_the_path(cluster: Cluster) -> None:
    a = cluster.agents["a"]
    result = a.cli("ping", "bob", "-c", "3", "-i", "0.2")
    lines = pongs(result.stdout)
    assert len(lines) == 3 and all(PONG.match(line) and RELAYED.search(line) for line in lines), result.stdout
    assert "bob (10.77.0.2): 3 sent, 3 received, 0 lost, rtt min/avg/max " in result.stdout


def test_until_direct_ends_with_a_direct_reply(cluster: Cluster) -> None:
    """The router lets a and b talk once the first (relayed) reply is printed."""
    a = cluster.agents["a"]
    ping = cluster.lab.start(a.ns, [sys.executable, "-m", "drasyl.agent", "ping", "bob", "--until-direct", "-c", "30",
                                    "-i", "0.5", "-W", "0.5", "--token", str(a.token), "--api", API],
                             "ping", python_env(**a.run_env))
    ping.wait_for_line(RELAYED.pattern, 10)
    cluster.lab.exec(cluster.rt, "nft", "delete", "table", "inet", "pingtest")
    assert ping.wait(20) == 0, cluster.describe()
    out = "\n".join(line.text for line in ping.stdout.lines)
    lines = pongs(out)
    assert f"via direct {AGENT_IPS['b']}:" in lines[-1] and PONG.match(lines[-1]), out
    assert all(RELAYED.search(line) for line in lines[:-1]), "it must stop at the first direct reply"
    assert f"path changed: relayed sp 7f588b40e13c… -> direct {AGENT_IPS['b']}:" in out, out
    assert out.rstrip().endswith("direct path reached"), out


def test_a_peer_no_policy_allows_is_refused_with_the_reason(cluster: Cluster) -> None:
    a = cluster.agents["a"]
    a.cli("add", cluster.net_url("net2"))
    a.wait_network("net2", "active", timeout=5)
    for peer in ("bob2", DENIED["b"]):
        result = a.cli("ping", peer, "-c", "1", check=False)
        assert result.returncode == 1, result
        assert "cannot ping bob2 (10.78.0.2): no [[policy]] of network" in result.stderr, result.stderr
        assert result.stdout == ""
    # b's key is in both networks: net1's policy allows it, so that is where the probe goes
    result = a.cli("ping", cluster.ids["b"].public_key_hex[:8], "-c", "1")
    assert len(pongs(result.stdout)) == 1 and PONG.match(pongs(result.stdout)[0]), result.stdout
    a.cli("remove", cluster.net_url("net2"))


def test_an_unknown_peer_is_refused(cluster: Cluster) -> None:
    result = cluster.agents["a"].cli("ping", "nobody", check=False)
    assert result.returncode == 1 and "unknown peer 'nobody'" in result.stderr, result.stderr
    assert OVERLAY["a"] not in result.stderr
