"""drasyl.portmap against a real router daemon: Debian's miniupnpd in the NAT lab's router nat-a.

For each protocol: :class:`PortMapper` (``tests/portmap_client.py`` on host a, which echoes
datagrams on the mapped port) maps the port; a datagram from the internet (the flood
namespace) to the external endpoint arrives and the reply comes back from that endpoint,
also when the router's own NAT is symmetric; the mapping is renewed (lifetime of seconds);
``stop()`` deletes it (miniupnpd's rules are gone and the datagram no longer arrives). A
router without miniupnpd yields a clear ``last_error`` within a bounded time. How miniupnpd
is made to map behind a documentation-range WAN address: :meth:`natlab.Router.start_miniupnpd`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from natlab import START_S, NatLab, Router
from netns import Lab, Process, python_env, require_lab_tools

from drasyl.identity import Identity

pytestmark = pytest.mark.netns

WAN = "198.51.100.21"
FLOOD = "198.51.100.66"
LIFETIME_S = 4  # renewals every 2 s
MAP_S = 15.0  # the first attempt: all protocols silent is ~11 s
CLIENT = "tests/portmap_client.py"
SEND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(float(sys.argv[3]))
s.bind(("0.0.0.0", 0))  # a new source port each time: no old conntrack entry applies
s.sendto(sys.argv[4].encode(), (sys.argv[1], int(sys.argv[2])))
try:
    data, addr = s.recvfrom(200)
    print(addr[0], addr[1], data.decode())
except socket.timeout:
    print("timeout")
"""
LISTEN = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("listening", flush=True)
data, addr = s.recvfrom(200)
print("from", addr[0], addr[1], data.decode(), flush=True)
"""


@pytest.fixture(scope="module")
def net(ids, tmp_path_factory) -> Iterator[NatLab]:
    require_lab_tools()
    if shutil.which("miniupnpd") is None:
        pytest.fail("these tests need miniupnpd (apt-get install miniupnpd-nftables; ./test.sh does)", pytrace=False)
    with Lab() as lab:
        yield NatLab(lab, tmp_path_factory.mktemp("portmap"), {"a": ids["id_1"]},
                     [Identity.generate(0), Identity.generate(0)])


@pytest.fixture
def router(net: NatLab, tmp_path) -> Iterator[Router]:
    router = net.agents["a"].router
    router.set_mode("cone")
    router.flush_conntrack()
    yield router
    router.stop_miniupnpd()


def start_client(net: NatLab, port: int, protocols: str) -> Process:
    proc = net.lab.start(net.agents["a"].ns, [sys.executable, CLIENT, str(port), protocols, str(LIFETIME_S)],
                         "portmap-client", python_env())
    return proc


def started(proc: Process) -> dict:
    return json.loads(proc.wait_for_line(r"^started ", MAP_S).text.split(" ", 1)[1])


def send_from_internet(net: NatLab, port: int, data: str, wait_s: float = 3.0) -> str:
    """Send ``data`` from the flood namespace to WAN:port; "ip port reply" or "timeout"."""
    return net.lab.exec(net.flood_ns, sys.executable, "-c", SEND, WAN, str(port), f"{wait_s:g}", data).strip()


def miniupnpd_rules(router: Router) -> str:
    return router.lab.exec(router.ns, "nft", "list", "chain", "inet", "filter", "prerouting_miniupnpd")


@pytest.mark.parametrize("protocol", ["pcp", "natpmp", "upnp"])
def test_map_reach_renew_delete(net: NatLab, router: Router, tmp_path, protocol: str) -> None:
    """Through a symmetric NAT: inbound via the mapping, replies from the external endpoint."""
    router.set_mode("symmetric")
    # miniupnpd serves only the protocol family under test: UPnP alone, or NAT-PMP with PCP
    router.start_miniupnpd(net.stun_server(), upnp=protocol == "upnp", natpmp=protocol != "upnp", workdir=tmp_path)
    port = 40000 + len(protocol)
    client = start_client(net, port, protocol)
    status = started(client)
    assert status["protocol"] == protocol and status["error"] is None, status
    external = status["external"]
    assert external == f"{WAN}:{port}", status  # miniupnpd grants the suggested port
    assert f"dport {port} dnat ip to 10.1.0.2:{port}" in miniupnpd_rules(router)

    assert send_from_internet(net, port, "ping1") == f"{WAN} {port} reply:ping1"
    client.wait_for_line(rf"^received {FLOOD}:\d+ ping1$", 5)

    t0 = time.monotonic()
    for _ in range(2):
        client.wait_for_line(rf"^log port mapping: renewed {protocol} {WAN}:{port} for {LIFETIME_S} s$",
                             LIFETIME_S + 5)
    assert time.monotonic() - t0 < 2 * LIFETIME_S + 4, "renewals came too late"
    assert send_from_internet(net, port, "ping2") == f"{WAN} {port} reply:ping2"

    client.write("stop")
    stopped = json.loads(client.wait_for_line(r"^stopped ", 10).text.split(" ", 1)[1])
    assert stopped["external"] is None
    client.wait_for_line(r"^mapping null$", 1, since=0)
    assert f"dport {port}" not in miniupnpd_rules(router), "miniupnpd kept the mapping after stop()"
    assert send_from_internet(net, port, "ping3", 2) == "timeout"
    assert not any("ping3" in line for line in client.lines_since(0))
    client.stop()


@pytest.mark.parametrize("protocol", ["pcp", "natpmp"])
def test_router_restart(net: NatLab, router: Router, tmp_path, protocol: str) -> None:
    """miniupnpd restarts (its rules gone, epoch back to 0): the client notices the epoch
    and maps again; the external endpoint works again."""
    stun = net.stun_server()
    router.start_miniupnpd(stun, upnp=False, workdir=tmp_path)
    port = 43000
    client = start_client(net, port, protocol)
    assert started(client)["external"] == f"{WAN}:{port}"
    for _ in range(2):  # the daemon's epoch grows for a while: a restart then sets it back clearly
        client.wait_for_line(r"^log port mapping: renewed ", LIFETIME_S + 5)
    router.stop_miniupnpd()
    assert f"dport {port}" not in router.lab.exec(router.ns, "nft", "list", "ruleset")
    mark = client.mark()
    router.start_miniupnpd(stun, upnp=False, workdir=tmp_path)
    client.wait_for_line(rf"^log port mapping: the {'PCP' if protocol == 'pcp' else 'NAT-PMP'} server restarted",
                         LIFETIME_S + 5, since=mark)
    wait_rule = time.monotonic() + 5
    while f"dport {port} dnat" not in miniupnpd_rules(router):
        assert time.monotonic() < wait_rule, f"no mapping after the restart\n{net.lab.describe()}"
        time.sleep(0.2)
    assert send_from_internet(net, port, "again") == f"{WAN} {port} reply:again"
    client.stop()


@pytest.mark.parametrize("mode", ["cone", "symmetric"])
def test_outbound_source_port(net: NatLab, router: Router, tmp_path, mode: str) -> None:
    """A first packet from the mapped socket to a new destination: the mapped port in cone
    mode, but a random one behind the symmetric NAT (miniupnpd adds only a DNAT rule, no SNAT;
    the mapping serves inbound flows, so a peer has to send first)."""
    router.set_mode(mode)
    router.start_miniupnpd(net.stun_server(), upnp=False, workdir=tmp_path)
    port = 41000
    client = start_client(net, port, "pcp")
    assert started(client)["external"] == f"{WAN}:{port}"
    listener = net.lab.start(net.flood_ns, [sys.executable, "-c", LISTEN, "5555"], "listener", python_env())
    listener.wait_for_line(r"^listening$", START_S)
    client.write(f"send {FLOOD} 5555 out")
    seen = listener.wait_for_line(r"^from (\S+) (\d+) out$", 5).match
    assert seen.group(1) == WAN
    if mode == "cone":
        assert int(seen.group(2)) == port
    else:
        assert int(seen.group(2)) != port, "symmetric NAT kept the mapped port for a new destination"
    client.stop()
    listener.stop()


def test_no_router_daemon(net: NatLab, router: Router) -> None:
    """Nothing answers PCP, NAT-PMP or SSDP: a clear error within a bounded time, no crash."""
    client = start_client(net, 42000, "pcp,natpmp,upnp")
    t0 = time.monotonic()
    status = started(client)
    assert time.monotonic() - t0 < MAP_S
    assert status["external"] is None
    error = status["error"]
    assert "PCP: no answer from 10.1.0.1:5351" in error or "PCP: 10.1.0.1:5351 refused" in error, error
    assert "NAT-PMP" in error and "UPnP: no Internet Gateway Device answered SSDP" in error, error
    client.write("status")
    assert json.loads(client.wait_for_line(r"^status ", 5).text.split(" ", 1)[1])["error"] == error
    client.close_stdin()
    assert client.wait(10) == 0, client.describe()
    assert not client.stderr.lines, client.describe()


def test_probe(net: NatLab, router: Router, tmp_path) -> None:
    """probe() sees all three protocols and leaves no mapping behind."""
    router.start_miniupnpd(net.stun_server(), workdir=tmp_path)
    code = "import asyncio, json; from drasyl.portmap import probe; print(json.dumps(asyncio.run(probe())))"
    out = subprocess.run(["ip", "netns", "exec", net.agents["a"].ns, sys.executable, "-c", code],
                         capture_output=True, text=True, timeout=30, env=python_env())
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["gateway"] == "10.1.0.1"
    for protocol in ("pcp", "natpmp", "upnp"):
        assert result[protocol] == {"ok": True, "external_ip": WAN, "error": None}, result
    assert "dnat" not in miniupnpd_rules(router), "probe left a mapping behind"
