"""The TUN device and the host adapters on a real kernel, each test in a fresh namespace.

The test process enters the namespace only while it opens sockets, the TUN or netlink
connections (:func:`inside`); those keep working in the namespace afterwards. Commands that
must see the namespace's view (``ping``, ``getent`` with ``/etc/netns/<ns>/hosts`` bind-mounted
over ``/etc/hosts``) run through ``ip netns exec``. The lab deletes the namespaces and the
``hosts_dir`` fixture ``/etc/netns/<ns>``, also when a test fails; the machine's own
``/etc/hosts`` is never opened.
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import struct
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import pytest
from pyroute2 import IPRoute
from pyroute2.netns import popns, pushns

from drasyl.tun.addresses import DeviceAddresses
from drasyl.tun.device import IFF_MULTI_QUEUE, IFF_NO_PI, IFF_TUN, TunDevice, TunError, _attach, cleanup_stale
from drasyl.tun.forwarding import Forwarding
from drasyl.tun.hosts import HostsFile
from drasyl.tun.packet import dst_ip, is_ipv4, src_ip
from drasyl.tun.routes import KernelRoutes, Route, RouteState
from drasyl.tun.system import Host, HostState
from netns import Lab, lab, python_env  # noqa: F401 (lab is a fixture)

pytestmark = pytest.mark.netns

ME = IPv4Interface("10.1.0.1/24")
PEER = IPv4Address("10.1.0.2")
WAIT = 10.0


@contextmanager
def inside(ns: str) -> Iterator[None]:
    """Run the block with this thread in namespace ``ns``."""
    pushns(ns)
    try:
        yield
    finally:
        popns()


@pytest.fixture
def ns(lab: Lab) -> str:
    return lab.namespace("tun")


@pytest.fixture
def tun(ns: str) -> Iterator[TunDevice]:
    with inside(ns):
        device = TunDevice(batch=64)
    yield device
    with inside(ns):
        device.close()


def links(lab: Lab, ns: str) -> str:
    return lab.ip(ns, "-o", "link", "show")


def add_address(ns: str, device: TunDevice, address: IPv4Interface) -> None:
    with inside(ns):
        assert DeviceAddresses(device.index).reconcile([address]) == []


def wait_readable(device: TunDevice, timeout: float = WAIT) -> None:
    ready, _, _ = select.select([device], [], [], timeout)
    assert ready, f"nothing to read from the TUN within {timeout} s"


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_reply(request: bytes) -> bytes:
    """The ICMP echo reply the pinged peer would send."""
    ihl = (request[0] & 0x0F) * 4
    header = bytearray(request[:ihl])
    header[12:16], header[16:20] = request[16:20], request[12:16]
    header[10:12] = b"\0\0"
    header[10:12] = checksum(bytes(header)).to_bytes(2, "big")
    icmp = bytearray(request[ihl:])
    icmp[0] = 0
    icmp[2:4] = b"\0\0"
    icmp[2:4] = checksum(bytes(icmp)).to_bytes(2, "big")
    return bytes(header + icmp)


# --- the device -------------------------------------------------------------------------------

def test_device_is_up_with_the_mtu_and_gone_after_close(lab, ns):
    with inside(ns):
        device = TunDevice(mtu=1400)
    line = lab.ip(ns, "-o", "-d", "link", "show", "drasyl")
    assert "mtu 1400" in line and ",UP," in line and "tun type tun pi off" in line
    with inside(ns):
        device.close()
    assert "drasyl" not in links(lab, ns)


def test_ping_through_the_tun(lab, ns, tun):
    add_address(ns, tun, ME)
    ping = lab.start(ns, ["ping", "-n", "-c", "1", "-W", "5", str(PEER)], "ping")
    deadline = time.monotonic() + WAIT
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no ICMP echo request read within {WAIT} s"
        wait_readable(tun, left)
        n = tun.read_batch()
        requests = [bytes(tun.slots[i][:tun.lengths[i]]) for i in range(n)]
        requests = [p for p in requests if is_ipv4(p) and p[9] == socket.IPPROTO_ICMP and p[20] == 8]
        if requests:
            break
    request = requests[0]
    assert (src_ip(request), dst_ip(request)) == (int(ME.ip), int(PEER))
    assert tun.write(echo_reply(request))
    assert ping.wait(WAIT) == 0
    ping.wait_for_line(r"1 received", 1)


def test_a_burst_is_read_in_batches_in_order(ns, tun):
    add_address(ns, tun, ME)
    with inside(ns):
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sender:
        for i in range(100):
            sender.sendto(i.to_bytes(2, "big") + bytes(998), (str(PEER), 9))
    wait_readable(tun)
    got: list[int] = []
    counts = []
    while (n := tun.read_batch()):
        counts.append(n)
        for i in range(n):
            pkt = tun.slots[i][:tun.lengths[i]]
            if is_ipv4(pkt) and pkt[9] == socket.IPPROTO_UDP:
                assert tun.lengths[i] == 20 + 8 + 1000
                got.append(int.from_bytes(pkt[28:30], "big"))
    assert got == list(range(100))
    assert counts[0] == 64  # the batch size; the rest in the next call(s)
    assert tun.read_batch() == 0


def test_a_packet_longer_than_a_slot_is_dropped_and_counted(lab, ns, tun):
    add_address(ns, tun, ME)
    lab.ip(ns, "link", "set", "drasyl", "mtu", "2000")  # raised behind the device's back
    with inside(ns):
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sender:
        sender.sendto(bytes(1800), (str(PEER), 9))
        sender.sendto(b"small", (str(PEER), 9))
    wait_readable(tun)
    deadline = time.monotonic() + WAIT
    udp: list[bytes] = []
    while not udp and time.monotonic() < deadline:
        n = tun.read_batch()
        udp = [bytes(tun.slots[i][:tun.lengths[i]]) for i in range(n) if tun.slots[i][9] == socket.IPPROTO_UDP]
    assert [len(p) for p in udp] == [33] and udp[0][28:] == b"small"
    assert tun.drops["tun_oversize"] == 1


def test_write_batch_delivers_and_a_bad_packet_is_counted(ns, tun):
    add_address(ns, tun, ME)
    with inside(ns):
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with receiver:
        receiver.bind((str(ME.ip), 5000))
        receiver.settimeout(WAIT)
        packets = []
        for i in range(3):
            payload = f"reply {i}".encode()
            header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), i, 0, 64, 17, 0,
                                 PEER.packed, ME.ip.packed)
            header = header[:10] + checksum(header).to_bytes(2, "big") + header[12:]
            packets.append(header + struct.pack("!HHHH", 7000, 5000, 8 + len(payload), 0) + payload)
        assert tun.write_batch([packets[0], b"\xff" * 40, packets[1], packets[2]]) == 3
        assert [receiver.recv(100) for _ in range(3)] == [b"reply 0", b"reply 1", b"reply 2"]
    assert sum(n for reason, n in tun.drops.items() if reason.startswith("tun_write_")) == 1


def test_more_queues_are_one_device(lab, ns):
    with inside(ns):
        device = TunDevice(queues=3)
        try:
            assert "numqueues 3" in lab.ip(ns, "-d", "link", "show", "drasyl")
            assert len({q.fileno() for q in device.queues}) == 3
        finally:
            device.close()
    assert "drasyl" not in links(lab, ns)


def test_close_removes_the_device_even_if_another_fd_joined_it(lab, ns):
    with inside(ns):
        device = TunDevice()
        intruder = _attach("drasyl", IFF_TUN | IFF_NO_PI | IFF_MULTI_QUEUE)
        try:
            assert "numqueues 2" in lab.ip(ns, "-d", "link", "show", "drasyl")
            device.close()
            assert "drasyl" not in links(lab, ns)
        finally:
            os.close(intruder)


def start_holder(lab: Lab, ns: str):
    """Another process that holds a TUN device ``drasyl`` open in ``ns``."""
    holder = lab.start(ns, [sys.executable, "-c",
                            "import time\nfrom drasyl.tun.device import TunDevice\n"
                            "device = TunDevice()\nprint('open', flush=True)\ntime.sleep(60)"],
                       "holder", env=python_env())
    holder.wait_for_line("open", WAIT)
    assert "drasyl" in links(lab, ns)
    return holder


def test_the_device_vanishes_when_its_process_is_killed(lab, ns):
    holder = start_holder(lab, ns)
    holder.popen.kill()
    holder.popen.wait(WAIT)
    assert "drasyl" not in links(lab, ns)


def test_a_device_in_use_is_refused_and_kept(lab, ns):
    start_holder(lab, ns)
    with inside(ns), pytest.raises(TunError, match="in use by another process"):
        TunDevice()
    assert "drasyl" in links(lab, ns)


@pytest.mark.parametrize("mode", [[], ["multi_queue"]])
def test_a_leftover_tun_nobody_holds_is_deleted_with_its_addresses_and_routes(lab, ns, mode):
    lab.ip(ns, "tuntap", "add", "drasyl", "mode", "tun", *mode)
    lab.ip(ns, "addr", "add", "10.9.0.1/24", "dev", "drasyl")
    lab.ip(ns, "link", "set", "drasyl", "up")
    lab.ip(ns, "route", "add", "192.0.2.0/24", "via", "10.9.0.2", "metric", "4900")
    with inside(ns):
        device = TunDevice()
        try:
            assert "persist off" in lab.ip(ns, "-d", "link", "show", "drasyl")
            assert lab.ip(ns, "-4", "addr", "show", "drasyl").count("inet ") == 0
            assert metric_4900(lab, ns) == []
        finally:
            device.close()


def test_a_device_of_that_name_that_is_not_a_tun_is_left_alone(lab, ns):
    lab.ip(ns, "link", "add", "drasyl", "type", "veth", "peer", "name", "other")
    with inside(ns), pytest.raises(TunError, match="not a TUN device"):
        cleanup_stale("drasyl")
    assert "drasyl" in links(lab, ns)


def test_a_bad_name_or_mtu_is_a_clear_error(lab, ns):
    with inside(ns):
        with pytest.raises(TunError, match="invalid TUN device name"):
            TunDevice(name="a-name-far-too-long")
        with pytest.raises(TunError, match="MTU 67 out of range"):
            TunDevice(mtu=67)
    assert "drasyl" not in links(lab, ns)


# --- addresses, routes, forwarding ------------------------------------------------------------

def test_addresses_are_reconciled_to_the_wanted_set(ns, tun):
    with inside(ns):
        addresses = DeviceAddresses(tun.index)
        first = {IPv4Interface("10.1.0.1/24"), IPv4Interface("10.2.0.1/16")}
        assert addresses.reconcile(first) == []
        assert addresses.current() == first
        changed = {IPv4Interface("10.1.0.1/25"), IPv4Interface("10.3.0.1/24")}  # prefix change, swap
        assert addresses.reconcile(changed) == []
        assert addresses.current() == changed
        assert addresses.reconcile(()) == []
        assert addresses.current() == set()


def test_an_address_that_cannot_be_applied_is_reported_not_raised(ns, tun):
    with inside(ns):
        gone = DeviceAddresses(tun.index + 1000)
        problems = gone.reconcile([ME])
    assert len(problems) == 1 and problems[0].startswith("cannot add address 10.1.0.1/24: ")


def metric_4900(lab: Lab, ns: str) -> list[str]:
    """``dest via gateway dev device`` of every route with drasyl's metric, sorted."""
    return sorted(" ".join(line.split()[:5]) for line in lab.ip(ns, "route", "show", "metric", "4900").splitlines())


def test_a_route_is_pending_until_its_gateway_is_reachable_then_applied_and_removed(lab, ns, tun):
    lan = Route(IPv4Network("192.168.50.0/24"), IPv4Address("10.1.0.10"))
    other = Route(IPv4Network("203.0.113.0/24"), IPv4Address("10.1.0.11"))
    with inside(ns):
        routes = KernelRoutes(tun.index)
        problems = routes.reconcile({lan})
        assert len(problems) == 1 and "192.168.50.0/24 via 10.1.0.10" in problems[0]
        assert routes.states == {lan: RouteState.PENDING}
        assert DeviceAddresses(tun.index).reconcile([ME]) == []  # the gateway is on-link now
        assert routes.reconcile({lan}) == []
        assert routes.states == {lan: RouteState.APPLIED}
    assert metric_4900(lab, ns) == ["192.168.50.0/24 via 10.1.0.10 dev drasyl"]
    lab.ip(ns, "route", "add", "198.51.100.0/24", "via", "10.1.0.12", "metric", "4900")  # not ours
    with inside(ns):
        assert routes.reconcile({other}) == []
        assert routes.states == {other: RouteState.APPLIED}
    assert metric_4900(lab, ns) == ["198.51.100.0/24 via 10.1.0.12 dev drasyl",
                                    "203.0.113.0/24 via 10.1.0.11 dev drasyl"]
    with inside(ns):
        assert routes.close() == []
    assert metric_4900(lab, ns) == ["198.51.100.0/24 via 10.1.0.12 dev drasyl"]


def test_a_default_route_is_handled_like_any_other(lab, ns, tun):
    default = Route(IPv4Network("0.0.0.0/0"), IPv4Address("10.1.0.10"))
    add_address(ns, tun, ME)
    with inside(ns):
        routes = KernelRoutes(tun.index)
        assert routes.reconcile({default}) == []
        with IPRoute() as ipr:
            assert routes.present(ipr) == {default}
        assert routes.close() == []
    assert metric_4900(lab, ns) == []


def test_ip_forward_is_switched_in_the_namespace_only(lab, ns, tmp_path):
    root_before = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    lab.sysctl(ns, "net.ipv4.ip_forward", "0")
    with inside(ns):
        forwarding = Forwarding(state_dir=str(tmp_path))
        assert forwarding.apply(frozenset({IPv4Network("192.168.50.0/24")})) == []
        assert Path("/proc/sys/net/ipv4/ip_forward").read_text() == "1\n"
    assert lab.exec(ns, "nft", "list", "tables").split() == ["table", "inet", "drasyl_agent"]
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text() == root_before
    with inside(ns):
        assert forwarding.close() == []
    assert lab.exec(ns, "sysctl", "-n", "net.ipv4.ip_forward").strip() == "0"
    assert lab.exec(ns, "nft", "list", "tables") == ""


# --- names ------------------------------------------------------------------------------------

@pytest.fixture
def hosts_dir(ns: str) -> Iterator[Path]:
    """``/etc/netns/<ns>/hosts``, which ``ip netns exec <ns>`` shows as ``/etc/hosts``."""
    directory = Path("/etc/netns") / ns
    created_parent = not directory.parent.exists()
    directory.mkdir(parents=True)
    try:
        yield directory
    finally:
        shutil.rmtree(directory)
        if created_parent:
            try:
                directory.parent.rmdir()  # unless another namespace uses it meanwhile
            except OSError:
                pass


def resolve(lab: Lab, ns: str, name: str) -> str | None:
    try:
        return lab.exec(ns, "getent", "hosts", name).split()[0]
    except RuntimeError:
        return None


def test_names_resolve_in_the_namespace_and_go_away_on_close(lab, ns, hosts_dir):
    path = hosts_dir / "hosts"
    user_lines = "127.0.0.1 localhost\n192.0.2.7 printer\n"
    path.write_text(user_lines)
    hosts = HostsFile(str(path))
    assert hosts.write([(IPv4Address("10.1.0.2"), "fileserver"), (IPv4Address("10.1.0.10"), "office-gw")])
    assert resolve(lab, ns, "fileserver") == "10.1.0.2"
    assert resolve(lab, ns, "office-gw.drasyl.network") == "10.1.0.10"
    assert resolve(lab, ns, "printer") == "192.0.2.7"
    assert hosts.write([(IPv4Address("10.1.0.3"), "fileserver")])
    assert resolve(lab, ns, "fileserver") == "10.1.0.3"
    assert resolve(lab, ns, "office-gw") is None
    assert hosts.clear()
    assert path.read_text() == user_lines
    assert resolve(lab, ns, "fileserver.drasyl.network") is None
    assert sorted(p.name for p in hosts_dir.iterdir()) == ["hosts"]


def test_hosts_inside_ip_netns_exec_are_written_through_the_bind_mount(lab, ns, hosts_dir):
    """An agent run with ``ip netns exec`` sees the namespace's file as /etc/hosts: the rename
    fails there (mount point) and the file is rewritten in place."""
    path = hosts_dir / "hosts"
    path.write_text("127.0.0.1 localhost\n")
    script = ("import os\nfrom ipaddress import IPv4Address\nfrom drasyl.tun.hosts import HostsFile\n"
              "st = os.stat('/etc/hosts')\n"
              f"assert (st.st_dev, st.st_ino) == {(path.stat().st_dev, path.stat().st_ino)}, 'not the ns file'\n"
              "assert HostsFile('/etc/hosts').write([(IPv4Address('10.1.0.2'), 'fileserver')])\n")
    lab.exec(ns, "env", f"PYTHONPATH={python_env()['PYTHONPATH']}", sys.executable, "-c", script)
    assert path.read_text().startswith("127.0.0.1 localhost\n10.1.0.2        fileserver ")
    assert resolve(lab, ns, "fileserver.drasyl.network") == "10.1.0.2"


# --- the host side as one -----------------------------------------------------------------------

def test_host_applies_states_in_order_and_close_leaves_nothing(lab, ns, tun, hosts_dir, tmp_path):
    path = hosts_dir / "hosts"
    user_lines = "127.0.0.1 localhost\n"
    path.write_text(user_lines + "10.1.0.5        old old.drasyl.network   # managed by drasyl\n")
    lab.sysctl(ns, "net.ipv4.ip_forward", "0")
    first = HostState(
        addresses=frozenset({ME}),
        routes=frozenset({Route(IPv4Network("192.168.50.0/24"), IPv4Address("10.1.0.10"))}),
        served=frozenset({IPv4Network("192.168.70.0/24")}),
        names=frozenset({(IPv4Address("10.1.0.2"), "fileserver")}))
    # Another subnet and a route through a gateway in it: applied in one go, address first.
    second = HostState(
        addresses=frozenset({IPv4Interface("10.2.0.1/24")}),
        routes=frozenset({Route(IPv4Network("192.168.60.0/24"), IPv4Address("10.2.0.10"))}),
        served=frozenset({IPv4Network("192.168.80.0/24")}),
        names=frozenset({(IPv4Address("10.2.0.2"), "fileserver")}))
    with inside(ns):
        host = Host(tun.index, str(path), Forwarding(tun.name, str(tmp_path)))
        assert host.start() == []
        assert path.read_text() == user_lines
        assert host.apply(first) == []
    assert metric_4900(lab, ns) == ["192.168.50.0/24 via 10.1.0.10 dev drasyl"]
    assert lab.exec(ns, "sysctl", "-n", "net.ipv4.ip_forward").strip() == "1"
    assert resolve(lab, ns, "fileserver") == "10.1.0.2"
    with inside(ns):
        assert host.apply(second) == []
        assert host.addresses.current() == {IPv4Interface("10.2.0.1/24")}
    assert metric_4900(lab, ns) == ["192.168.60.0/24 via 10.2.0.10 dev drasyl"]
    assert lab.exec(ns, "sysctl", "-n", "net.ipv4.ip_forward").strip() == "1"
    assert resolve(lab, ns, "fileserver") == "10.2.0.2"
    with inside(ns):
        assert host.close() == []
        assert host.addresses.current() == set()
    assert metric_4900(lab, ns) == []
    assert path.read_text() == user_lines
    assert lab.exec(ns, "sysctl", "-n", "net.ipv4.ip_forward").strip() == "0"
    assert lab.exec(ns, "nft", "list", "tables") == ""


def test_host_reports_what_failed_and_applies_the_rest(lab, ns, tun, hosts_dir):
    path = hosts_dir / "hosts"
    path.write_text("127.0.0.1 localhost\n")
    unreachable = Route(IPv4Network("192.168.50.0/24"), IPv4Address("10.7.0.10"))  # no address there
    state = HostState(addresses=frozenset({ME}), routes=frozenset({unreachable}),
                      names=frozenset({(IPv4Address("10.1.0.2"), "file server")}))
    with inside(ns):
        host = Host(tun.index, str(path))
        problems = host.apply(state)
        assert host.addresses.current() == {ME}
        assert host.routes.states == {unreachable: RouteState.PENDING}
        assert host.close() == []
    assert len(problems) == 2
    assert problems[0].startswith("cannot add route 192.168.50.0/24 via 10.7.0.10")
    assert "'file server' cannot be written" in problems[1]
