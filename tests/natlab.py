"""A NAT lab for end-to-end agent tests: super peers on a fake internet, agents behind NAT routers.

Built on :class:`netns.Lab` (which removes every namespace, process and ``/etc/netns`` file
it made, also when a test fails)::

    sp1 198.51.100.10 / 2001:db8::10     sp2 198.51.100.11 / 2001:db8::11     flood 198.51.100.66
    ------------- hub bridge "internet" 198.51.100.0/24, 2001:db8::/64 -------------
    nat-a wan .21 / ::21                 nat-b wan .22 / ::22                 nat-c wan .23 / ::23
          lan 10.1.0.1, 2001:db8:a1::1         lan 10.2.0.1, 2001:db8:a2::1         lan 10.3.0.1 …
    a 10.1.0.2, 2001:db8:a1::2           b 10.2.0.2, 2001:db8:a2::2           c 10.3.0.2 …

Each router's mode can be switched at run time (:meth:`Router.set_mode`), so one topology
serves many scenarios:

- ``cone``: nftables ``masquerade``. Linux keeps the source port when it is free, so the
  mapping is endpoint-independent; the filter lets in replies only (port-restricted cone).
- ``symmetric``: ``masquerade random,fully-random``: a new random port per destination.
- ``none``: no translation that matters and no filter: a 1:1 NAT maps the router's public
  address to the host, for every port (a host with a public address, as a cloud VM has).
- ``udp-blocked``: as ``cone``, but UDP from the LAN to the internet is dropped (TCP passes).
- ``cone-rebound``: as ``cone``, but new mappings take ports 20000-29999: switched to after a
  conntrack flush, every host behind the router gets a new public port (a router that rebooted).

Like home routers, they drop unsolicited packets to themselves before conntrack confirms an
entry. :meth:`Router.start_miniupnpd` runs a real UPnP-IGD/NAT-PMP/PCP daemon (miniupnpd) in a
router; it needs the RFC 5780 STUN server of :meth:`NatLab.stun_server` (namespace ``stun``,
198.51.100.30 and .31), created on first use. IPv6 is routed without translation through a stateful filter (replies only), and
``ipv4=False`` drops all IPv4 forwarding: an IPv6-only underlay.

:class:`SuperPeer` runs ours (``python -m drasyl.superpeer``) or drasyl-rs' ``drasyl-sp``
with UDP on 22527 and TCP on 443, and prints its peer table every 2 s; nftables in its
namespace count the APP bytes it relays (the wire format's header: magic, message type APP,
recipient key prefix), which works for both implementations; ours also has /metrics.
:class:`Agent` runs ``drasyl-agent run`` with a config.toml (a vector identity), a file://
network config naming every agent, and reads ``status --json``. Waits are bounded and on
events; :meth:`NatLab.describe` shows every agent's status and the super peers' peer tables.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import drasyl_rs
from netns import Lab, Process, python_env

from drasyl.identity import Identity

SP_UDP_PORT = 22527
SP_TCP_PORT = 443
API = "127.0.0.1:22527"  # every agent in its own namespace, so one address for all
METRICS = "127.0.0.1:9898"  # our super peer's /metrics, inside its namespace
OVERLAY_NET = "10.99.0.0/24"
PEER_TABLE_S = 2  # how often super peers print their peer table
START_S = 20.0  # a Python process up and answering (2 shared cores)
POLL_S = 0.2
MODES = ("cone", "symmetric", "none", "udp-blocked", "cone-rebound")
TCP_CHECK = str(Path(__file__).with_name("tcp_check.py"))
STUN5780 = str(Path(__file__).with_name("stun5780.py"))
STUN_IPS = ("198.51.100.30", "198.51.100.31")
STUN_PORT = 3478


def wait_until(what: str, check: Callable[[], object], timeout: float, context: Callable[[], str],
               interval: float = POLL_S) -> object:
    """``check()``'s first truthy result, polled until ``timeout`` s; fails naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s\n{context()}")
        time.sleep(interval)


def drasyl_rs_sp() -> Path:
    """drasyl-rs' super peer binary; skips the test without it (fails under ``CI=true``)."""
    return drasyl_rs.binary_dir() / "drasyl-sp"


def _hex_prefix(public_key_hex: str) -> str:
    return "0x" + public_key_hex[:8]


# --- routers ------------------------------------------------------------------------------


@dataclass
class Router:
    """A NAT router in front of one LAN; its nftables follow :attr:`mode`."""

    lab: Lab
    ns: str
    wan: str  # interface names
    lan: str
    wan_ip: str
    host_ip: str  # the one host behind it (mode none maps the public address to it)
    mode: str = "cone"
    ipv4: bool = True
    extra_lans: tuple[str, ...] = ()  # more LAN interfaces (another host, an inner router)
    #: While miniupnpd runs: the STUN server's addresses (see :meth:`start_miniupnpd`).
    stun_ips: tuple[str, ...] = ()
    miniupnpd: Process | None = None

    def set_mode(self, mode: str, ipv4: bool = True) -> None:
        """Replace the ruleset; existing conntrack entries stay (see :meth:`flush_conntrack`)."""
        if mode not in MODES:
            raise ValueError(f"unknown NAT mode {mode!r}")
        self.mode, self.ipv4 = mode, ipv4
        self.lab.exec(self.ns, "nft", "-f", "-", input=self.ruleset())

    def ruleset(self) -> str:
        wan, lan = self.wan, self.lan
        masquerade = {"symmetric": "masquerade random,fully-random",
                      "cone-rebound": "meta l4proto { tcp, udp } masquerade to :20000-29999"}.get(self.mode, "masquerade")
        if self.mode == "none":
            pre = f'iifname "{wan}" ip daddr {self.wan_ip} dnat to {self.host_ip}'
            post = f'oifname "{wan}" ip saddr {self.host_ip} snat to {self.wan_ip}'
            inbound = f'iifname "{wan}" oifname "{lan}" ct status dnat accept'
        else:
            pre, post, inbound = "", f'oifname "{wan}" {masquerade}', ""
        stun_in = ""
        if self.stun_ips:  # miniupnpd: see start_miniupnpd
            post = f'iifname "{lan}" {post}'
            inbound = f'iifname "{wan}" oifname "{lan}" ct status dnat accept'
            stun_in = f'iifname "{wan}" ip saddr {{ {", ".join(self.stun_ips)} }} meta l4proto udp accept'
        udp_drop = f'iifname "{lan}" oifname "{wan}" meta l4proto udp counter drop' \
            if self.mode == "udp-blocked" else ""
        v4_drop = "" if self.ipv4 else "meta nfproto ipv4 counter drop"
        # flush-and-define in one transaction: the rules never disappear in between
        return f"""
table ip natlab_nat
delete table ip natlab_nat
table inet natlab_fw
delete table inet natlab_fw
table ip natlab_nat {{
    chain pre {{
        type nat hook prerouting priority dstnat; policy accept;
        {pre}
    }}
    chain post {{
        type nat hook postrouting priority srcnat; policy accept;
        {post}
    }}
}}
table inet natlab_fw {{
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname "{wan}" meta l4proto ipv6-icmp accept
        iifname "{wan}" ct state established,related accept
        {stun_in}
        iifname "{wan}" counter drop
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
        {v4_drop}
        {udp_drop}
        meta l4proto ipv6-icmp accept
        ct state established,related accept
        iifname "{lan}" oifname "{wan}" accept
        {self._lan_rules()}
        {inbound}
        counter
    }}
}}
"""

    def _lan_rules(self) -> str:
        """With more than one LAN: out to the internet, and between the LANs (no NAT there)."""
        if not self.extra_lans:
            return ""
        lans = ", ".join(f'"{i}"' for i in (self.lan, *self.extra_lans))
        return f"iifname {{ {lans} }} oifname {{ {lans}, \"{self.wan}\" }} accept"

    def start_miniupnpd(self, stun: tuple[str, str, int], upnp: bool = True, natpmp: bool = True,
                        workdir: Path | None = None) -> Process:
        """Run Debian's miniupnpd (``miniupnpd-nftables``) in the router: UPnP-IGD and/or
        NAT-PMP with PCP (``natpmp``) for its LAN, mapping UDP and TCP 1024-65535.

        miniupnpd refuses to map while its WAN address is reserved (all documentation ranges
        are), unless ``ext_perform_stun`` finds, through an RFC 5780 server
        (``stun`` = (ip1, ip2, port): :meth:`NatLab.stun_server`), that the address is public
        and unfiltered. For that, while it runs, the router masquerades LAN traffic only (its
        own keeps its ports) and accepts UDP from the STUN server; and, as a home router
        does, it forwards what miniupnpd's DNAT rules let in. The ``inet filter`` table with
        the chains miniupnpd fills is ours to create: the package lacks the script that
        would (``miniupnpd_functions.sh``)."""
        if self.miniupnpd is not None:
            raise RuntimeError(f"{self.ns}: miniupnpd already runs")
        self.stun_ips = stun[:2]
        self.set_mode(self.mode, self.ipv4)
        self.lab.nft(self.ns, """
table inet filter
delete table inet filter
table inet filter {
    chain miniupnpd { }
    chain prerouting_miniupnpd { }
    chain postrouting_miniupnpd { }
    chain forward {
        type filter hook forward priority filter; policy accept;
        jump miniupnpd
    }
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        jump prerouting_miniupnpd
    }
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        jump postrouting_miniupnpd
    }
}
""")
        lan_net = self.host_ip.rsplit(".", 1)[0] + ".0/24"
        conf = (workdir or Path("/tmp")) / f"miniupnpd-{self.ns}.conf"
        conf.write_text(
            f"ext_ifname={self.wan}\nlistening_ip={self.lan}\nport=0\n"
            f"enable_upnp={'yes' if upnp else 'no'}\nenable_natpmp={'yes' if natpmp else 'no'}\n"
            f"secure_mode=yes\nnotify_interval=60\nclean_ruleset_interval=600\n"
            "min_lifetime=2\n"  # PCP's default is 120 s: tests renew within seconds
            # no system_uptime: the PCP/NAT-PMP epoch is the daemon's, so a restart shows
            f"uuid=3f1bd0a6-5a8c-4c1c-9d1e-{secrets.token_hex(6)}\n"
            f"ext_perform_stun=yes\next_stun_host={stun[0]}\next_stun_port={stun[2]}\n"
            f"allow 1024-65535 {lan_net} 1024-65535\ndeny 0-65535 0.0.0.0/0 0-65535\n")
        pidfile = conf.with_suffix(".pid")
        # -d logs to stderr; the shell execs it with stderr on stdout (one pid, lines to wait for)
        self.miniupnpd = self.lab.start(self.ns, ["sh", "-c", f'exec miniupnpd -d -f "{conf}" -P "{pidfile}" 2>&1'],
                                        f"miniupnpd-{self.ns}")
        self.miniupnpd.wait_for_line(r"Port forwarding is now enabled", START_S)
        return self.miniupnpd

    def stop_miniupnpd(self) -> None:
        """Stop miniupnpd (it removes its rules), drop its table, restore the plain ruleset."""
        if self.miniupnpd is not None:
            self.miniupnpd.stop()
            self.miniupnpd = None
        self.lab.exec(self.ns, "nft", "-f", "-", input="table inet filter\ndelete table inet filter\n")
        self.stun_ips = ()
        self.set_mode(self.mode, self.ipv4)

    def flush_conntrack(self) -> int:
        """Forget every NAT mapping and filter state of this router (a reboot of its tables);
        the number of entries there were. Uses netlink (pyroute2, a dependency of the agent),
        so neither the ``conntrack`` tool nor a package install is needed."""
        out = self.lab.exec(self.ns, sys.executable, "-c",
                            "from pyroute2 import Conntrack\n"
                            "ct = Conntrack()\n"
                            "print(sum(1 for _ in ct.dump_entries()))\n"
                            "ct.flush()\n")
        return int(out)


# --- super peers --------------------------------------------------------------------------


class SuperPeer:
    """Our super peer or drasyl-rs' on the internet segment; restartable with its identity."""

    def __init__(self, lab: Lab, ns: str, kind: str, ip: str, ip6: str, identity_file: Path,
                 public_key_hex: str, agents: dict[str, str]) -> None:
        self.lab, self.ns, self.kind = lab, ns, kind
        self.ip, self.ip6 = ip, ip6
        self.identity_file = identity_file
        self.public_key_hex = public_key_hex
        self.binary = drasyl_rs_sp() if kind == "rs" else None
        self.proc: Process | None = None
        self._install_counters(agents)

    @property
    def name(self) -> str:
        return f"{'drasyl-rs' if self.kind == 'rs' else 'our'} super peer {self.ip}"

    def url(self, family: int = 4) -> str:
        host = self.ip if family == 4 else f"[{self.ip6}]"
        return (f"udp://{host}:{SP_UDP_PORT}?publicKey={self.public_key_hex}&networkId=1"
                f"&tcpPort={SP_TCP_PORT}")

    def start(self) -> None:
        env = {
            "DRASYL_IDENTITY_FILE": str(self.identity_file),
            "DRASYL_UDP4_LISTEN": f"{self.ip}:{SP_UDP_PORT}",
            "DRASYL_UDP6_LISTEN": f"[{self.ip6}]:{SP_UDP_PORT}",
            "DRASYL_TCP4_LISTEN": f"{self.ip}:{SP_TCP_PORT}",
            "DRASYL_TCP6_LISTEN": f"[{self.ip6}]:{SP_TCP_PORT}",
            "DRASYL_PEERS_PRINT_INTERVAL": str(PEER_TABLE_S * 1000),
        }
        if self.kind == "rs":
            self.proc = self.lab.start(self.ns, [str(self.binary)], "drasyl-sp (drasyl-rs)",
                                       {**os.environ, **env, "RUST_LOG": "warn", "NO_COLOR": "1"})
        else:
            self.proc = self.lab.start_python(self.ns, "drasyl.superpeer", "drasyl-sp (ours)",
                                              DRASYL_PROMETHEUS_LISTEN=METRICS, **env)
        self.proc.wait_for_line(r"^Super peer listening on:$", START_S)
        self.proc.wait_for_line(re.escape(f"udp://{self.ip}:{SP_UDP_PORT}?publicKey={self.public_key_hex}"),
                                START_S)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.popen.poll() is None

    def rss_kib(self) -> int:
        assert self.proc is not None
        text = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE).group(1))

    # relayed bytes: nftables counters on the APP datagrams the super peer sends

    def _install_counters(self, agents: dict[str, str]) -> None:
        """One counter per agent for the APPs relayed to it over UDP (long header: magic at
        0, message type 1 at 78, recipient at 10; offsets in bits from the UDP header), and
        one each for everything the super peer sends and receives over TCP (frames are not at
        fixed offsets in segments)."""
        counters = "\n".join(f"    counter relay_{name} {{ }}" for name in agents)
        rules = "\n".join(
            f"        udp sport {SP_UDP_PORT} @th,64,32 0x1e3f5001 @th,688,8 1 @th,144,32 "
            f"{_hex_prefix(pk)} counter name \"relay_{name}\"" for name, pk in agents.items())
        self.lab.nft(self.ns, f"""
table inet natlab_sp {{
{counters}
    counter tcp_out {{ }}
    counter tcp_in {{ }}
    chain output {{
        type filter hook output priority filter; policy accept;
{rules}
        tcp sport {SP_TCP_PORT} counter name "tcp_out"
    }}
    chain input {{
        type filter hook input priority filter; policy accept;
        tcp dport {SP_TCP_PORT} counter name "tcp_in"
    }}
}}
""")

    def counters(self) -> dict[str, int]:
        """Bytes per counter: ``relay_<agent>`` (UDP APPs relayed to it), ``tcp_out``, ``tcp_in``."""
        out = json.loads(self.lab.exec(self.ns, "nft", "-j", "list", "counters", "table", "inet", "natlab_sp"))
        return {item["counter"]["name"]: item["counter"]["bytes"] for item in out["nftables"] if "counter" in item}

    def relayed_udp(self, *agents: str) -> int:
        counters = self.counters()
        return sum(counters[f"relay_{a}"] for a in agents)

    def metrics_relayed(self) -> int | None:
        """``drasyl_sp_relayed_bytes`` summed (ours only; drasyl-rs is built without metrics)."""
        if self.kind == "rs" or not self.running:
            return None
        text = self.lab.exec(self.ns, sys.executable, "-c",
                             "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
                             f"'http://{METRICS}/metrics', timeout=5).read().decode())")
        return int(sum(float(v) for v in re.findall(r"^drasyl_sp_relayed_bytes\{[^}]*\} (\S+)$", text, re.MULTILINE)))

    def peer_table(self) -> str:
        """The last peer table it printed (both implementations print the same layout)."""
        if self.proc is None:
            return f"{self.name}: not started"
        lines = self.proc.lines_since(0)
        starts = [i for i, t in enumerate(lines) if t.startswith("Node ")]
        if not starts:
            return f"{self.name}: no peer table printed"
        block = []
        for text in lines[starts[-1]:]:
            block.append(text)
            if text.startswith("Total Peers"):
                break
        state = "running" if self.running else f"exited ({self.proc.popen.poll()})"
        return f"--- {self.name} ({state}), last peer table:\n" + "\n".join(block)

    def registered(self, public_key_hex: str, transport: str | None = None) -> bool:
        """True if its latest peer table lists the key (over ``transport`` udp/tcp)."""
        table = self.peer_table()
        for line in table.splitlines():
            if line.startswith(public_key_hex):
                return transport is None or f" {transport}://" in line
        return False


# --- agents ---------------------------------------------------------------------------------


@dataclass
class Agent:
    """One ``drasyl-agent run`` in its namespace behind its router."""

    lab: Lab
    name: str
    ns: str
    router: Router
    identity: Identity
    overlay_ip: str
    lan_ip: str
    lan_ip6: str
    workdir: Path
    proc: Process | None = None
    started_at: float = 0.0
    member: str = ""  # the network member it runs as (its counters at the super peer); "" = name
    config_extra: str = ""  # appended to config.toml (e.g. a [nat] table)

    @property
    def counted_as(self) -> str:
        return self.member or self.name

    @property
    def pk(self) -> str:
        return self.identity.public_key_hex

    @property
    def config(self) -> Path:
        return self.workdir / "config.toml"

    @property
    def token(self) -> Path:
        return self.workdir / "auth.token"

    def write_config(self, super_peer_urls: list[str], network_url: str) -> None:
        peers = ",\n".join(f'  "{u}"' for u in super_peer_urls)
        self.config.write_text(
            f"super_peers = [\n{peers},\n]\n\n"
            f'[[network]]\nconfig_url = "{network_url}"\n\n'
            f'[identity]\nsk = "{self.identity.secret_key.hex()}"\npow = {self.identity.proof_of_work}\n'
            f'{self.config_extra}')
        self.config.chmod(0o600)

    def start(self, super_peer_urls: list[str], network_url: str, udp_addrs: list[str] | None = None) -> None:
        """Start ``drasyl-agent run`` (a fresh config.toml) and wait until its API answers."""
        self.write_config(super_peer_urls, network_url)
        env = {"DRASYL_UDP_ADDRS": " ".join(udp_addrs)} if udp_addrs else {}
        env.update(self._env())
        self.started_at = time.monotonic()
        self.proc = self.lab.start(self.ns, [sys.executable, "-m", "drasyl.agent", "run", *self._cli_args(),
                                             "--log-file", "/dev/stdout", "--log-level", "info"],
                                   f"agent-{self.name}", python_env(**env))
        self.proc.wait_for_line(r"REST API listening", START_S)

    def _cli_args(self) -> list[str]:
        return ["--config", str(self.config), *self.client_args()]

    def client_args(self) -> list[str]:
        """Options of the client subcommands (status, netcheck): they take no --config."""
        return ["--token", str(self.token), "--api", API]

    def _env(self) -> dict[str, str]:
        """Its own run directory (API socket, forwarding state): /run is shared by all namespaces."""
        return {"DRASYL_RUN_DIR": str(self.workdir / "run")}

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def _status_or_none(self) -> dict | None:
        if self.proc is None or self.proc.popen.poll() is not None:
            raise AssertionError(f"agent {self.name} is not running\n"
                                 f"{self.proc.describe() if self.proc else ''}")
        result = subprocess.run(["ip", "netns", "exec", self.ns, sys.executable, "-m", "drasyl.agent",
                                 "status", "--json", *self.client_args()],
                                capture_output=True, text=True, timeout=20, env=python_env(**self._env()))
        if result.returncode != 0:
            return None
        return json.loads(result.stdout)

    def status(self) -> dict:
        status = self._status_or_none()
        assert status is not None, f"agent {self.name}: status --json failed"
        return status

    def peer(self, other: Agent, status: dict | None = None) -> dict | None:
        status = status or self.status()
        return next((p for p in status["peers"] if p["public_key"] == other.pk), None)

    def path_to(self, other: Agent) -> str | None:
        peer = self.peer(other)
        return peer and peer["path"]

    def super_peer_transport(self, sp: SuperPeer) -> str | None:
        """How this agent reaches ``sp`` now (udp, tcp) or None."""
        for entry in self.status()["super_peers"]:
            if entry["public_key"] == sp.public_key_hex:
                return entry["transport"]
        return None

    def default_super_peer(self) -> str | None:
        return next((e["public_key"] for e in self.status()["super_peers"] if e.get("default")), None)

    def ping_once(self, target: str, wait_s: float = 1.0) -> bool:
        result = subprocess.run(["ip", "netns", "exec", self.ns, "ping", "-n", "-q", "-c", "1", "-W", f"{wait_s:g}",
                                 target], capture_output=True, timeout=wait_s + 10)
        return result.returncode == 0

    def describe(self) -> str:
        if self.proc is None:
            return f"--- agent {self.name}: not running"
        try:
            status = json.dumps(self._status_or_none(), indent=1)
        except Exception as exc:  # the process may be gone: show why
            status = f"status unavailable: {exc}"
        return f"--- agent {self.name} ({self.ns}, behind {self.router.mode} NAT) status --json:\n{status}"


# --- flows across the TUN -----------------------------------------------------------------


_PING_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from ")


class PingFlow:
    """``ping -i`` from one agent to another's overlay IP in the background: reply times
    tell when a flow stopped and resumed. The times are ping's own (``-D``, taken when the
    reply arrived), moved to the monotonic clock, so a busy test process does not skew them."""

    def __init__(self, lab: Lab, src: Agent, target: str, interval_s: float = 0.1) -> None:
        self._wall_offset = time.time() - time.monotonic()
        self.interval = interval_s
        self.proc = lab.start(src.ns, ["ping", "-n", "-D", "-O", "-i", f"{interval_s:g}", "-W", "1", target],
                              f"ping-{src.name}")

    def replies(self) -> list[float]:
        """Monotonic times of the replies so far."""
        return [float(m.group(1)) - self._wall_offset for line in list(self.proc.stdout.lines)
                if (m := _PING_REPLY.match(line.text))]

    def wait_reply(self, after: float, timeout: float) -> float:
        """Time of the first reply later than ``after``."""
        found = wait_until("a ping reply", lambda: next((t for t in self.replies() if t > after), None),
                           timeout, lambda: self.proc.describe(), interval=0.05)
        return float(found)

    def outage(self, since: float, timeout: float, steady_s: float = 1.0) -> float:
        """The longest time without a reply from ``since`` until replies have come steadily
        (no gap over three intervals) for ``steady_s``; fails after ``timeout``."""
        limit = 3 * self.interval

        def settled() -> float | None:
            times = [since, *(t for t in self.replies() if t > since)]
            i = len(times) - 1
            while i > 0 and times[i] - times[i - 1] <= limit:
                i -= 1
            if len(times) < 2 or times[-1] - times[i] < steady_s:
                return None
            return max(b - a for a, b in zip(times, times[1:]))
        return float(wait_until("replies flowing steadily again", settled, timeout + steady_s,
                                lambda: self.proc.describe(), interval=0.05))

    def stop(self) -> None:
        self.proc.stop()


def tcp_transfer(lab: Lab, src: Agent, dst: Agent, nbytes: int, timeout: float = 60.0) -> float:
    """Send ``nbytes`` over TCP from ``src`` to ``dst``'s overlay IP; checks the SHA-256 at the
    receiver; the transfer's duration in s."""
    port = 5000 + secrets.randbelow(1000)
    sink = lab.start(dst.ns, [sys.executable, TCP_CHECK, "sink", dst.overlay_ip, str(port), f"{timeout:g}"],
                     f"tcp-sink-{dst.name}")
    sink.wait_for_line(r"^listening$", START_S)
    t0 = time.monotonic()
    sent = subprocess.run(["ip", "netns", "exec", src.ns, sys.executable, TCP_CHECK, "send", dst.overlay_ip,
                           str(port), str(nbytes), f"{timeout:g}"], capture_output=True, text=True,
                          timeout=timeout + 10)
    assert sent.returncode == 0, f"TCP {src.name}->{dst.name}: {sent.stdout}{sent.stderr}"
    digest = sent.stdout.split()[-1]
    got = sink.wait_for_line(r"^received (\d+) ([0-9a-f]{64})$", timeout)
    elapsed = time.monotonic() - t0
    sink.stop()
    assert (int(got.match.group(1)), got.match.group(2)) == (nbytes, digest), \
        f"TCP {src.name}->{dst.name}: received {got.text}, sent {nbytes} {digest}"
    return elapsed


# --- the lab --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    name: str
    index: int  # 1, 2, 3: LAN 10.<index>.0.0/24, WAN .2<index>

    @property
    def wan_ip(self) -> str:
        return f"198.51.100.2{self.index}"

    @property
    def wan_ip6(self) -> str:
        return f"2001:db8::2{self.index}"

    @property
    def lan6(self) -> str:
        return f"2001:db8:a{self.index}::"


class NatLab:
    """The whole topology; agents and super peers are started by the scenarios."""

    def __init__(self, lab: Lab, workdir: Path, agent_ids: dict[str, Identity], sp_ids: list[Identity]) -> None:
        self.lab, self.workdir = lab, workdir
        self.members: list[str] = []  # namespaces on the internet segment
        self.lan_routes: list[tuple[str, str]] = []  # (IPv6 LAN prefix, router WAN address)
        self.sp_ns = []
        for i, ip in enumerate(("198.51.100.10", "198.51.100.11"), 1):
            ns = lab.namespace(f"sp{i}")
            self._attach(ns, ip, f"2001:db8::1{i - 1}")
            self.sp_ns.append(ns)
        self.sp_ids = sp_ids
        self.flood_ns = lab.namespace("flood")
        self._attach(self.flood_ns, "198.51.100.66", "2001:db8::66")
        self.agents: dict[str, Agent] = {}
        self.extra: dict[str, Agent] = {}  # hosts added by same_lan/double_nat, named as they were
        for index, (name, identity) in enumerate(agent_ids.items(), 1):
            self.agents[name] = self._site(Site(name, index), identity)
        self.network_file = workdir / "network.toml"
        self.network_file.write_text(self._network_config())
        self.network_url = f"file://{self.network_file}"
        self.super_peers: list[SuperPeer] = []
        self._stun: tuple[str, str, int] | None = None

    def stun_server(self) -> tuple[str, str, int]:
        """An RFC 5780 STUN server (``tests/stun5780.py``) on 198.51.100.30 and .31, ports 3478
        and 3479, started once; (ip1, ip2, port) for :meth:`Router.start_miniupnpd`."""
        if self._stun is None:
            ns = self.lab.namespace("stun")
            iface = self._attach(ns, STUN_IPS[0], "2001:db8::30")
            self.lab.ip(ns, "addr", "add", f"{STUN_IPS[1]}/24", "dev", iface)
            proc = self.lab.start(ns, [sys.executable, STUN5780, *STUN_IPS, str(STUN_PORT), str(STUN_PORT + 1)],
                                  "stun5780", python_env())
            proc.wait_for_line(r"^listening$", START_S)
            self._stun = (*STUN_IPS, STUN_PORT)
        return self._stun

    def _attach(self, ns: str, ip: str, ip6: str) -> str:
        iface = self.lab.internet(ns, ip, ip6)
        for prefix, via in self.lan_routes:
            self.lab.ip(ns, "-6", "route", "add", f"{prefix}/64", "via", via)
        self.members.append(ns)
        return iface

    def _site(self, site: Site, identity: Identity) -> Agent:
        lab = self.lab
        router_ns = lab.namespace(f"nat-{site.name}")
        wan = self._attach(router_ns, site.wan_ip, site.wan_ip6)
        ns = lab.namespace(site.name)
        gw, host = f"10.{site.index}.0.1", f"10.{site.index}.0.2"
        lan, eth = lab.veth(router_ns, ns, f"{gw}/24", f"{host}/24")
        lab.ip(router_ns, "addr", "add", f"{site.lan6}1/64", "dev", lan, "nodad")
        lab.ip(ns, "addr", "add", f"{site.lan6}2/64", "dev", eth, "nodad")
        lab.ip(ns, "route", "add", "default", "via", gw)
        lab.ip(ns, "-6", "route", "add", "default", "via", f"{site.lan6}1")
        lab.sysctl(router_ns, "net.ipv4.ip_forward", "1")
        lab.sysctl(router_ns, "net.ipv6.conf.all.forwarding", "1")
        for member in self.members:
            if member != router_ns:
                lab.ip(member, "-6", "route", "add", f"{site.lan6}/64", "via", site.wan_ip6)
        self.lan_routes.append((site.lan6, site.wan_ip6))
        router = Router(lab, router_ns, wan, lan, site.wan_ip, host)
        router.set_mode("cone")
        lab.etc_file(ns, "hosts", "127.0.0.1 localhost\n")  # the agent edits this, never the machine's
        workdir = self.workdir / site.name
        workdir.mkdir(parents=True)
        return Agent(lab, site.name, ns, router, identity, f"10.99.0.{site.index}", host, f"{site.lan6}2", workdir)

    def _network_config(self) -> str:
        nodes = "".join(f'[[node]]\npk = "{a.pk}"\nip = "{a.overlay_ip}"\nhostname = "{a.name}"\n\n'
                        for a in self.agents.values())
        return (f'network = "{OVERLAY_NET}"\nname = "natlab"\n\n{nodes}'
                '[[policy]]\nsource_groups = ["ALL"]\ndestination_groups = ["ALL"]\n')

    def super_peer(self, kind: str, index: int = 0) -> SuperPeer:
        """A super peer (``py`` ours, ``rs`` drasyl-rs') in sp namespace ``index`` (not started)."""
        ns = self.sp_ns[index]
        identity = self.sp_ids[index]
        path = self.workdir / f"{ns}-{kind}.identity"
        if not path.exists():
            identity.save(path)
        sp = SuperPeer(self.lab, ns, kind, f"198.51.100.1{index}", f"2001:db8::1{index}", path,
                       identity.public_key_hex, {n: a.pk for n, a in self.agents.items()})
        self.super_peers.append(sp)
        return sp

    def same_lan(self, name: str, behind: str, identity_of: str) -> Agent:
        """A second host ``name`` behind agent ``behind``'s router (its own LAN there, routed to
        the first one without NAT; no hairpin on the public address), running as the member
        ``identity_of`` (whose agent must not run at the same time)."""
        router = self.agents[behind].router
        k = len(router.extra_lans) + 1
        ns = self.lab.namespace(name)
        octets = self.agents[behind].lan_ip.split(".")[:2]
        gw, host = ".".join(octets + [str(k), "1"]), ".".join(octets + [str(k), "2"])
        lan, _ = self.lab.veth(router.ns, ns, f"{gw}/24", f"{host}/24")
        self.lab.ip(ns, "route", "add", "default", "via", gw)
        router.extra_lans += (lan,)
        router.set_mode(router.mode, router.ipv4)
        return self._extra_agent(name, ns, router, identity_of, host)

    def double_nat(self, name: str, behind: str, identity_of: str) -> Agent:
        """Host ``name`` behind an inner cone NAT router (``nat-<name>``) that is itself a host
        behind agent ``behind``'s router: a NAT behind a NAT."""
        outer = self.agents[behind].router
        k = len(outer.extra_lans) + 1
        inner_ns = self.lab.namespace(f"nat-{name}")
        octets = self.agents[behind].lan_ip.split(".")[:2]
        gw, wan_ip = ".".join(octets + [str(k), "1"]), ".".join(octets + [str(k), "2"])
        outer_lan, inner_wan = self.lab.veth(outer.ns, inner_ns, f"{gw}/24", f"{wan_ip}/24")
        outer.extra_lans += (outer_lan,)
        outer.set_mode(outer.mode, outer.ipv4)
        self.lab.ip(inner_ns, "route", "add", "default", "via", gw)
        self.lab.sysctl(inner_ns, "net.ipv4.ip_forward", "1")
        ns = self.lab.namespace(name)
        inner_lan, _ = self.lab.veth(inner_ns, ns, "10.50.0.1/24", "10.50.0.2/24")
        self.lab.ip(ns, "route", "add", "default", "via", "10.50.0.1")
        inner = Router(self.lab, inner_ns, inner_wan, inner_lan, wan_ip, "10.50.0.2")
        inner.set_mode("cone")
        return self._extra_agent(name, ns, inner, identity_of, "10.50.0.2")

    def _extra_agent(self, name: str, ns: str, router: Router, identity_of: str, host: str) -> Agent:
        member = self.agents[identity_of]
        self.lab.etc_file(ns, "hosts", "127.0.0.1 localhost\n")
        workdir = self.workdir / name
        workdir.mkdir(parents=True)
        agent = Agent(self.lab, name, ns, router, member.identity, member.overlay_ip, host, "", workdir,
                      member=identity_of)
        self.extra[name] = agent
        return agent

    def reset(self, modes: dict[str, str], ipv4: bool = True) -> None:
        """Stop every agent and super peer, set the routers' modes, flush their conntrack."""
        for agent in (*self.agents.values(), *self.extra.values()):
            agent.stop()
        for sp in self.super_peers:
            sp.stop()
            self.lab.exec(sp.ns, "nft", "delete", "table", "inet", "natlab_sp")
        self.super_peers.clear()
        for name, agent in self.agents.items():
            agent.router.set_mode(modes.get(name, "cone"), ipv4)
            agent.router.flush_conntrack()

    def describe(self) -> str:
        """Every agent's status and every super peer's peer table (for failure messages)."""
        parts = [a.describe() for a in (*self.agents.values(), *self.extra.values()) if a.proc is not None]
        parts += [sp.peer_table() for sp in self.super_peers]
        parts += [f"--- router {a.router.ns}: mode {a.router.mode}, ipv4 {a.router.ipv4}" for a in self.agents.values()]
        return "\n".join(parts) + "\n--- process output:\n" + self.lab.describe()
