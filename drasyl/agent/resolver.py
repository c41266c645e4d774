"""Names of overlay peers: the hosts file, an embedded DNS resolver, and systemd-resolved.

The names are the ones the agent writes into ``/etc/hosts`` (:mod:`drasyl.tun.hosts`): every
member this node may talk to, itself included, after local consent (:mod:`.consent`), with its
IPv4 and its IPv6 address. Next to the hosts file, :class:`Names` answers them over DNS:

- **Where**: UDP port 53 on each overlay address of this node (IPv4 and IPv6), never on a
  wildcard address; sockets follow the addresses as networks come and go (bound with
  ``IP_FREEBIND``, so an address just being added does not fail the bind).
- **What**: ``A`` and ``AAAA`` for ``<host>`` and ``<host>.drasyl.network`` (TTL 60, case
  ignored, authoritative); another type for a known name gets an empty answer; an unknown name
  inside ``drasyl.network`` gets ``NXDOMAIN``; everything else ``REFUSED``: it is never an open
  resolver and forwards nothing.
- **Who**: queries from this host only (the source is one of its overlay addresses or
  loopback). A peer could otherwise ask for the names of members it may not talk to; its
  queries are refused and counted.
- **Limits**: at most :data:`RATE` queries per second per source (burst :data:`BURST`), for
  at most :data:`MAX_SOURCES` sources at a time; a datagram that is not one DNS query is
  dropped and counted. No TCP: an answer has at most a few records and always fits UDP.
- **systemd-resolved**: when it runs (``/run/systemd/resolve`` exists and ``resolvectl`` is
  there) and in its network namespace (PID 1's: resolved is a system service), the resolver
  is registered as per-link DNS of the TUN device for the routing-only domain
  ``~drasyl.network`` (``resolvectl dns``/``domain``), and ``resolvectl revert`` removes it at
  exit. Elsewhere (containers, network namespaces) the hosts file does the work for programs
  and the resolver answers whoever asks it directly.

``status`` shows the mode (``hosts``, ``hosts+resolver``, ``hosts+resolver+resolved``), the
addresses served and counters (:meth:`Names.status`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import time
from collections import Counter
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSError, DNSRecord

from ..tun.hosts import DOMAIN

log = logging.getLogger("drasyl.agent")

PORT = 53
TTL = 60
RATE = 50.0
BURST = 100.0
MAX_SOURCES = 4096
RESOLVED_DIR = "/run/systemd/resolve"
RESOLVECTL_TIMEOUT_S = 10.0
IP_FREEBIND = 15
IPV6_FREEBIND = 78
_SUFFIX = "." + DOMAIN
Address = IPv4Address | IPv6Address


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, names: Names) -> None:
        self.names = names
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        reply = self.names.answer(data, addr[0])
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


class Names:
    """The resolver's sockets and table, and the systemd-resolved registration (module docstring)."""

    def __init__(self, port: int = PORT, resolved_dir: str = RESOLVED_DIR) -> None:
        self.port = port
        self._resolved_dir = resolved_dir
        self.table: dict[str, tuple[tuple[IPv4Address, ...], tuple[IPv6Address, ...]]] = {}
        self._names: frozenset[tuple[Address, str]] = frozenset()  # what ``table`` was made from
        self._local: frozenset[str] = frozenset()  # our overlay addresses as text: local sources
        self._servers: dict[Address, asyncio.DatagramTransport] = {}
        self._bind_errors: dict[Address, str] = {}
        self._resolved: tuple[str, tuple[Address, ...]] | None = None  # (device, addresses) registered
        self.resolved_error: str | None = None
        self.stats: Counter[str] = Counter()
        self._buckets: dict[str, tuple[float, float]] = {}  # source → (tokens, at)

    async def start(self) -> None:
        """Nothing to bind before the first addresses arrive (:meth:`apply`)."""

    # --- the table and the sockets ------------------------------------------------------------

    async def apply(self, names: Iterable[tuple[Address, str]], addresses: Iterable[Address],
                    device: str) -> list[str]:
        """Answer ``names`` on ``addresses`` (of ``device``); the problems (empty: done). Called
        at every housekeeping tick: the table is only rebuilt when the names changed."""
        names = frozenset(names)
        if names != self._names:
            table: dict[str, tuple[list[IPv4Address], list[IPv6Address]]] = {}
            for ip, name in names:
                v4, v6 = table.setdefault(name.lower(), ([], []))
                (v4 if ip.version == 4 else v6).append(ip)
            self.table = {name: (tuple(sorted(v4)), tuple(sorted(v6))) for name, (v4, v6) in table.items()}
            self._names = names
        wanted = set(addresses)
        self._local = frozenset(str(a) for a in wanted)
        for address in list(self._servers.keys() - wanted):
            self._servers.pop(address).close()
        self._bind_errors = {a: e for a, e in self._bind_errors.items() if a in wanted}
        problems = []
        for address in sorted(wanted - self._servers.keys(), key=lambda a: (a.version, a)):
            try:
                self._servers[address] = await self._bind(address)
                self._bind_errors.pop(address, None)
            except OSError as exc:
                self._bind_errors[address] = exc.strerror or str(exc)
                problems.append(f"DNS resolver: cannot listen on {_endpoint(address, self.port)}: {exc.strerror}")
        await self._register(device)
        if self.resolved_error is not None:
            problems.append(f"systemd-resolved: {self.resolved_error}")
        return problems

    async def _bind(self, address: Address) -> asyncio.DatagramTransport:
        family = socket.AF_INET if address.version == 4 else socket.AF_INET6
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET:
                sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
            sock.bind((str(address), self.port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(lambda: _Protocol(self), sock=sock)
        return transport

    async def close(self) -> None:
        for transport in self._servers.values():
            transport.close()
        self._servers.clear()
        if self._resolved is not None:
            device = self._resolved[0]
            self._resolved = None
            error = await _resolvectl("revert", device)
            if error is not None:
                log.warning("systemd-resolved: cannot remove the DNS settings of %s: %s", device, error)

    # --- systemd-resolved --------------------------------------------------------------------

    def resolved_running(self) -> str | None:
        """Why systemd-resolved is not used, or None when it is to be used."""
        if not os.path.isdir(self._resolved_dir):
            return "not running"
        if shutil.which("resolvectl") is None:
            return "resolvectl not found"
        try:
            if os.stat("/proc/self/ns/net").st_ino != os.stat("/proc/1/ns/net").st_ino:
                return "it runs in another network namespace"
        except OSError:
            pass
        return None

    async def _register(self, device: str) -> None:
        servers = tuple(sorted(self._servers, key=lambda a: (a.version, a)))
        wanted = (device, servers) if servers and self.resolved_running() is None else None
        if wanted == self._resolved:
            return
        if wanted is None:
            if self._resolved is not None:
                await _resolvectl("revert", self._resolved[0])
                self._resolved = None
            return
        error = (await _resolvectl("dns", device, *map(str, servers))
                 or await _resolvectl("domain", device, "~" + DOMAIN))
        self.resolved_error = error
        self._resolved = wanted if error is None else None
        if error is None:
            log.info("systemd-resolved: %s answered by %s", DOMAIN, ", ".join(map(str, servers)))

    # --- queries -----------------------------------------------------------------------------

    def answer(self, data: bytes, source: str) -> bytes | None:
        """The reply to one datagram from ``source``, or None (dropped; counted)."""
        if not self._take_token(source):
            self.stats["rate_limited"] += 1
            return None
        try:
            request = DNSRecord.parse(data)
        except (DNSError, ValueError, IndexError, UnicodeError):
            self.stats["malformed"] += 1
            return None
        if request.header.qr or len(request.questions) != 1:
            self.stats["malformed"] += 1
            return None
        self.stats["queries"] += 1
        reply = request.reply(ra=0, aa=1)
        question = request.questions[0]
        if not self._from_here(source) or request.header.opcode != 0 or question.qclass != 1:
            return self._rcode(reply, RCODE.REFUSED, "refused")
        qname = str(question.qname).rstrip(".").lower()
        if qname.endswith(_SUFFIX):
            label, zone = qname[:-len(_SUFFIX)], True
        else:
            label, zone = qname, False
        found = self.table.get(label) if "." not in label else None
        if found is None:
            if zone or qname == DOMAIN:
                return self._rcode(reply, RCODE.NXDOMAIN if qname != DOMAIN else RCODE.NOERROR, "nxdomain")
            return self._rcode(reply, RCODE.REFUSED, "refused")
        v4, v6 = found
        if question.qtype in (QTYPE.A, QTYPE.ANY):
            for ip in v4:
                reply.add_answer(RR(question.qname, QTYPE.A, rdata=A(str(ip)), ttl=TTL))
        if question.qtype in (QTYPE.AAAA, QTYPE.ANY):
            for ip in v6:
                reply.add_answer(RR(question.qname, QTYPE.AAAA, rdata=AAAA(str(ip)), ttl=TTL))
        self.stats["answered"] += 1
        return reply.pack()

    def _rcode(self, reply: DNSRecord, rcode: int, counter: str) -> bytes:
        reply.header.rcode = rcode
        if rcode == RCODE.REFUSED:
            reply.header.aa = 0
        self.stats[counter] += 1
        return reply.pack()

    def _from_here(self, source: str) -> bool:
        if source in self._local:
            return True
        try:
            return ip_address(source.partition("%")[0]).is_loopback
        except ValueError:
            return False

    def _take_token(self, source: str) -> bool:
        now = time.monotonic()
        tokens, at = self._buckets.get(source, (BURST, now))
        tokens = min(BURST, tokens + (now - at) * RATE)
        if tokens < 1:
            self._buckets[source] = (tokens, now)
            return False
        if source not in self._buckets and len(self._buckets) >= MAX_SOURCES:
            self._buckets.clear()  # bounded; a flood of sources only resets the buckets
        self._buckets[source] = (tokens - 1, now)
        return True

    # --- status ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        mode = "hosts+resolver" if self._servers else "hosts"
        if self._resolved is not None:
            mode += "+resolved"
        return {"mode": mode,
                "resolver": [_endpoint(a, self.port) for a in sorted(self._servers, key=lambda a: (a.version, a))],
                "resolver_errors": {_endpoint(a, self.port): e for a, e in self._bind_errors.items()},
                "resolved": "registered" if self._resolved is not None else (self.resolved_error
                                                                             or self.resolved_running()),
                "queries": dict(sorted(self.stats.items()))}


def _endpoint(address: Address, port: int) -> str:
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


async def _resolvectl(*args: str) -> str | None:
    """Run ``resolvectl args``; None on success, else what went wrong."""
    try:
        proc = await asyncio.create_subprocess_exec("resolvectl", *args, stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.PIPE)
        async with asyncio.timeout(RESOLVECTL_TIMEOUT_S):
            _, err = await proc.communicate()
    except (OSError, TimeoutError) as exc:
        return f"resolvectl {' '.join(args)}: {exc}"
    if proc.returncode != 0:
        return f"resolvectl {' '.join(args)}: {err.decode(errors='replace').strip() or proc.returncode}"
    return None
