"""A gateway forwards from the overlay to the prefixes it serves, and nothing else.

Four namespaces: ``member`` ─ ``gw`` ─ ``lan`` (served) and ``gw`` ─ ``other`` (not served).
In ``gw`` the veth end towards ``member`` is named ``drasyl`` and stands in for the TUN device;
:class:`Forwarding` runs in ``gw`` in a driver process fed commands on stdin, so that it can be
killed like a crashed agent. The LAN routes the overlay subnet back to the gateway (no NAT).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from drasyl.tun.forwarding import Forwarding
from netns import Lab, Process, lab, python_env  # noqa: F401 (lab is a fixture)

WAIT = 10.0
OVERLAY, LAN, OTHER = "10.10.0.0/24", "10.20.0.0/24", "10.30.0.0/24"
MEMBER, LAN_HOST, OTHER_HOST = "10.10.0.2", "10.20.0.2", "10.30.0.2"
TABLE = "inet drasyl_agent"

DRIVER = """
import json, sys
from ipaddress import IPv4Network
from drasyl.tun.forwarding import Forwarding
fwd = Forwarding(state_dir=sys.argv[1])
print("ready", flush=True)
for line in sys.stdin:
    cmd, *args = line.split()
    problems = fwd.apply(frozenset(map(IPv4Network, args))) if cmd == "apply" else getattr(fwd, cmd)()
    print("done", json.dumps(problems), flush=True)
"""


class Gateway:
    """The namespaces, and the driver of :class:`Forwarding` in ``gw``."""

    def __init__(self, lab: Lab, state_dir: Path) -> None:
        self.lab = lab
        self.state_dir = state_dir
        self.member, self.gw = lab.namespace("member"), lab.namespace("gw")
        self.lan, self.other = lab.namespace("lan"), lab.namespace("other")
        lab.ip(self.gw, "link", "add", "drasyl", "type", "veth", "peer", "name", "ovl0", "netns", self.member)
        for ns, iface, addr in ((self.gw, "drasyl", "10.10.0.1/24"), (self.member, "ovl0", f"{MEMBER}/24")):
            lab.ip(ns, "addr", "add", addr, "dev", iface)
            lab.ip(ns, "link", "set", iface, "up")
        lab.veth(self.gw, self.lan, "10.20.0.1/24", f"{LAN_HOST}/24")
        lab.veth(self.gw, self.other, "10.30.0.1/24", f"{OTHER_HOST}/24")
        for ns, via, dests in ((self.member, "10.10.0.1", (LAN, OTHER)), (self.lan, "10.20.0.1", (OVERLAY, OTHER)),
                               (self.other, "10.30.0.1", (OVERLAY, LAN))):
            for dest in dests:
                lab.ip(ns, "route", "add", dest, "via", via)
        self.driver: Process | None = None

    def start(self) -> None:
        self.driver = self.lab.start(self.gw, [sys.executable, "-c", DRIVER, str(self.state_dir)], "forwarding",
                                     python_env())
        self.driver.wait_for_line("^ready$", WAIT)

    def call(self, *command: str) -> list[str]:
        """Run ``apply <prefix>...``, ``close`` or ``recover`` in the driver; its problems."""
        assert self.driver is not None
        since = self.driver.mark()
        self.driver.write(" ".join(command))
        return json.loads(self.driver.wait_for_line("^done (.*)$", WAIT, since=since).match[1])

    def ip_forward(self) -> str:
        return self.lab.exec(self.gw, "cat", "/proc/sys/net/ipv4/ip_forward").strip()

    def tables(self) -> str:
        return self.lab.exec(self.gw, "nft", "list", "tables")

    def pings(self, ns: str, dst: str) -> bool:
        return subprocess.run(["ip", "netns", "exec", ns, "ping", "-n", "-c", "1", "-W", "1", dst],
                              capture_output=True, timeout=WAIT).returncode == 0


@pytest.fixture
def net(lab: Lab, tmp_path: Path) -> Gateway:
    return Gateway(lab, tmp_path / "run" / "drasyl")


@pytest.mark.netns
def test_only_the_served_prefix_is_reachable_from_the_overlay_and_ip_forward_comes_back(net):
    net.lab.sysctl(net.gw, "net.ipv4.ip_forward", "0")
    net.start()
    assert net.call("recover") == []
    assert net.call("apply") == []  # nothing served: nothing changes
    assert net.ip_forward() == "0" and "drasyl" not in net.tables()
    assert not net.state_dir.exists()
    assert net.call("apply", LAN) == []
    assert net.ip_forward() == "1"
    assert f"table {TABLE}" in net.tables()
    assert (net.state_dir / "ip_forward").read_text() == "0\n"
    assert oct(net.state_dir.stat().st_mode & 0o777) == "0o755"
    assert net.pings(net.member, LAN_HOST)  # served; the replies come back into the overlay
    assert not net.pings(net.member, OTHER_HOST)  # not served: another VPN, another LAN
    assert not net.pings(net.lan, MEMBER)  # nothing new into the overlay
    assert not net.pings(net.lan, OTHER_HOST)  # no router between the other interfaces either
    assert net.call("apply", LAN) == []  # unchanged: still the same
    assert net.call("apply", OTHER) == []  # another set replaces the first
    assert net.pings(net.member, OTHER_HOST) and not net.pings(net.member, LAN_HOST)
    assert net.call("close") == []
    assert net.ip_forward() == "0" and "drasyl" not in net.tables()
    assert not (net.state_dir / "ip_forward").exists()


@pytest.mark.netns
def test_served_set_emptied_restores_the_host(net):
    net.lab.sysctl(net.gw, "net.ipv4.ip_forward", "0")
    net.start()
    assert net.call("apply", LAN) == []
    assert net.call("apply") == []
    assert net.ip_forward() == "0" and "drasyl" not in net.tables()
    assert not (net.state_dir / "ip_forward").exists()
    assert not net.pings(net.member, LAN_HOST)


@pytest.mark.netns
def test_after_a_crash_recover_restores_ip_forward_and_deletes_the_table(net):
    net.lab.sysctl(net.gw, "net.ipv4.ip_forward", "0")
    net.start()
    assert net.call("apply", LAN) == []
    net.driver.kill()  # SIGKILL: nothing cleaned up
    assert net.ip_forward() == "1" and f"table {TABLE}" in net.tables()
    net.start()
    assert net.call("recover") == []
    assert net.ip_forward() == "0" and "drasyl" not in net.tables()
    assert not (net.state_dir / "ip_forward").exists()
    assert not net.pings(net.member, LAN_HOST)


@pytest.mark.netns
def test_a_host_that_already_routes_keeps_routing(net):
    net.lab.sysctl(net.gw, "net.ipv4.ip_forward", "1")
    assert net.pings(net.lan, OTHER_HOST)
    assert net.pings(net.member, OTHER_HOST) and net.pings(net.other, MEMBER)  # before: anything goes
    net.start()
    assert net.call("apply", LAN) == []
    assert (net.state_dir / "ip_forward").read_text() == "1\n"
    assert net.pings(net.lan, OTHER_HOST)  # someone else's routing is left alone
    assert net.pings(net.member, LAN_HOST)
    assert not net.pings(net.member, OTHER_HOST)
    assert not net.pings(net.other, MEMBER)
    assert net.call("close") == []
    assert net.ip_forward() == "1" and "drasyl" not in net.tables()
    assert net.pings(net.lan, OTHER_HOST)


# --- without a namespace: a fake nft and a file for ip_forward ---------------------------------

@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Forwarding, Path, Path]:
    """A :class:`Forwarding` whose ``nft`` only logs its input, and its ip_forward file."""
    bin_dir, log = tmp_path / "bin", tmp_path / "nft.log"
    bin_dir.mkdir()
    nft = bin_dir / "nft"
    nft.write_text(f"#!/bin/sh\ncat >> {log}\necho --- >> {log}\n")
    nft.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    sysctl = tmp_path / "ip_forward"
    sysctl.write_text("0\n")
    return Forwarding(state_dir=str(tmp_path / "state"), ip_forward_path=str(sysctl)), sysctl, log


def test_an_unchanged_set_calls_nft_no_more(fake):
    fwd, sysctl, log = fake
    served = frozenset({IPv4Network("192.168.50.0/24"), IPv4Network("192.168.50.128/25")})
    assert fwd.apply(served) == []
    assert fwd.apply(frozenset(served)) == []
    assert log.read_text().count("---") == 1
    assert "elements = { 192.168.50.0/24 }" in log.read_text()  # overlaps collapsed
    assert sysctl.read_text() == "1\n"
    assert fwd.close() == [] and fwd.close() == []
    assert log.read_text().count("---") == 2 and sysctl.read_text() == "0\n"


def test_without_nft_forwarding_is_refused_and_ip_forward_untouched(fake, monkeypatch, tmp_path):
    fwd, sysctl, _ = fake
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert fwd.apply(frozenset({IPv4Network("192.168.50.0/24")})) == ["forwarding refused: nft not found"]
    assert sysctl.read_text() == "0\n"
    assert not (tmp_path / "state").exists()
