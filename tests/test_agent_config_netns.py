"""A misspelt ``super_peers`` stops the agent before it sends anything (no silent fallback to
the public drasyl.org super peers), proven by the packets counted in its namespace."""

from __future__ import annotations

import sys

import pytest
from netns import lab, python_env, require_lab_tools  # noqa: F401 (lab is a fixture)

from drasyl.agent.config import DEFAULT_SUPER_PEERS
from drasyl.identity import Identity
from drasyl.urls import SuperPeerUrl

pytestmark = pytest.mark.netns

LOW = 6
EXIT_TIMEOUT_S = 30.0
COUNTERS = """
table inet count {
    counter to_super_peers {}
    chain output {
        type filter hook output priority 0;
        udp dport 22527 counter name to_super_peers
        tcp dport 8443 counter name to_super_peers
    }
}
"""


def test_a_misspelt_super_peers_key_exits_1_and_sends_nothing(lab, tmp_path):
    ns = lab.namespace("agent")
    peer = lab.namespace("gw")
    lab.veth(ns, peer, "203.0.113.10/24", "203.0.113.1/24")
    lab.ip(ns, "route", "add", "default", "via", "203.0.113.1")
    # the public super peers' names resolve inside the namespace: a fallback would send to them
    hosts = "".join(f"198.51.100.{i + 1} {SuperPeerUrl.parse(url).host}\n" for i, url in enumerate(DEFAULT_SUPER_PEERS))
    lab.etc_file(ns, "hosts", "127.0.0.1 localhost\n" + hosts)
    lab.nft(ns, COUNTERS)
    ident = Identity.generate(LOW)
    config = tmp_path / "config.toml"
    config.write_text(f'super_peer = ["{DEFAULT_SUPER_PEERS[0].replace("sp-rjl1.drasyl.org", "198.51.100.200")}"]\n'
                      f'[identity]\nsk = "{ident.secret_key.hex()}"\npow = {ident.proof_of_work}\n')
    proc = lab.start(ns, [sys.executable, "-m", "drasyl.agent", "run", "--config", str(config),
                          "--token", str(tmp_path / "auth.token"), "--run-dir", str(tmp_path / "run")],
                     "agent", python_env(DRASYL_MIN_POW_DIFFICULTY=str(LOW)))
    assert proc.wait(EXIT_TIMEOUT_S) == 1, proc.describe()
    proc.stderr.join(EXIT_TIMEOUT_S)  # its last lines
    assert [line.text for line in proc.stderr.lines] == [
        f"drasyl-agent run: {config}: super_peer: unknown key; did you mean 'super_peers'?"], proc.describe()
    assert lab.nft_packets(ns) == {"to_super_peers": 0}
