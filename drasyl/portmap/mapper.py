"""Keep one UDP port mapped on the home router: PCP, else NAT-PMP, else UPnP-IGD.

:class:`PortMapper` maps, renews at half the granted lifetime, retries with back-off when
nothing answers, watches the PCP/NAT-PMP epoch (and NAT-PMP's external address) every
``check_s`` so a rebooted router gets the mapping back within that time, and deletes the
mapping on :meth:`PortMapper.stop`. :func:`probe` tells which protocols a gateway answers
without leaving a mapping behind (for ``drasyl-agent netcheck``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import natpmp, pcp, upnp
from .net import Lan, PortMapError, find_lan, local_ip_towards

log = logging.getLogger("drasyl.portmap")

PROTOCOLS = ("pcp", "natpmp", "upnp")
NAMES = {"pcp": "PCP", "natpmp": "NAT-PMP", "upnp": "UPnP"}
DEFAULT_LIFETIME_S = 7200
MIN_RENEW_S = 30.0  # never renew more often, whatever lifetime a router grants
CHECK_S = 60.0
BACKOFF_S = (5.0, 15.0, 60.0, 300.0)
STOP_S = 3.0  # the whole delete on stop, across protocols
DELETE_WAITS_S = (0.25, 0.5, 1.0)


@dataclass(frozen=True)
class Mapping:
    """A mapping the router granted: its public address and port for our internal one."""

    protocol: str  # "pcp" | "natpmp" | "upnp"
    internal: tuple[str, int]
    external: tuple[str, int]
    lifetime_s: int  # 0: permanent (UPnP routers that only do those); deleted on stop
    gateway: str


def epoch_restarted(old_epoch: int, old_at: float, new_epoch: int, new_at: float) -> bool:
    """Whether the router lost its mappings since the last answer (RFC 6887 §8.5, RFC 6886
    §3.6): its epoch went back, or advanced clearly less than our clock."""
    if new_epoch + 1 < old_epoch:
        return True
    client_delta = new_at - old_at
    return (new_epoch - old_epoch) + 2 < client_delta - client_delta / 16


class PortMapper:
    """Maps UDP ``port`` of this host on the default gateway (or ``gateway``) and keeps it.

    ``on_change`` gets the new :class:`Mapping` whenever the external endpoint changes, and
    None when the mapping is gone (stopped, or lost and not renewable). It runs in the
    event loop and must not block."""

    def __init__(self, port: int, *, gateway: str | None = None, local_ip: str | None = None,
                 lifetime_s: int = DEFAULT_LIFETIME_S, protocols: Sequence[str] = PROTOCOLS,
                 on_change: Callable[[Mapping | None], None] | None = None, check_s: float = CHECK_S) -> None:
        if not 1 <= port <= 0xFFFF:
            raise ValueError(f"port {port} out of range")
        unknown = set(protocols) - set(PROTOCOLS)
        if unknown or not protocols:
            raise ValueError(f"protocols must be a non-empty subset of {PROTOCOLS}, got {tuple(protocols)}")
        if lifetime_s < 2 * MIN_RENEW_S:
            raise ValueError(f"lifetime_s must be at least {2 * MIN_RENEW_S:g}")
        self.port = port
        self.gateway = gateway
        self.local_ip = local_ip
        self.lifetime_s = lifetime_s
        self.protocols = tuple(protocols)
        self.on_change = on_change
        self.check_s = check_s
        self.mapping: Mapping | None = None
        self.last_error: str | None = None
        self._expires_at = 0.0
        self._epoch: tuple[int, float] | None = None  # the router's last epoch and when we saw it
        self._nonce = pcp.new_nonce()
        self._igd: upnp.Gateway | None = None
        self._task: asyncio.Task | None = None
        self._first = asyncio.Event()

    # --- public -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start mapping in the background; returns after the first attempt (a mapping or
        :attr:`last_error`: about 11 s at most when nothing answers). Run it as a task
        to not wait."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"portmap-{self.port}")
        await self._first.wait()

    async def stop(self) -> None:
        """Stop renewing and delete the mapping (best effort, at most :data:`STOP_S`)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        mapping = self.mapping
        if mapping is None:
            return
        try:
            await asyncio.wait_for(self._delete(mapping), STOP_S)
        except (PortMapError, asyncio.TimeoutError) as exc:
            log.info("port mapping: deleting %s on %s failed: %s", mapping.protocol, mapping.gateway,
                     exc or "timeout")
        self._set(None)

    def status(self) -> dict:
        """JSON-able state for ``status``/``netcheck``."""
        m = self.mapping
        expires = None
        if m is not None and m.lifetime_s:
            expires = max(0, round(self._expires_at - time.monotonic()))
        return {
            "protocol": m.protocol if m else None,
            "gateway": m.gateway if m else self.gateway,
            "internal": f"{m.internal[0]}:{m.internal[1]}" if m else None,
            "external": f"{m.external[0]}:{m.external[1]}" if m else None,
            "lifetime_s": m.lifetime_s if m else None,
            "expires_in_s": expires,
            "error": self.last_error,
        }

    # --- the loop ---------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                mapping = await self._map()
            except PortMapError as exc:
                self.last_error = str(exc)
                log.info("port mapping: %s", exc)
                if self.mapping is not None and time.monotonic() >= self._expires_at:
                    self._set(None)
                self._first.set()
                await asyncio.sleep(BACKOFF_S[min(failures, len(BACKOFF_S) - 1)])
                failures += 1
                continue
            failures = 0
            self.last_error = None
            if self.mapping is not None and self.mapping.external == mapping.external:
                log.debug("port mapping: renewed %s %s:%d for %d s", mapping.protocol, *mapping.external,
                          mapping.lifetime_s)
            self._set(mapping)
            self._first.set()
            granted = mapping.lifetime_s or self.lifetime_s
            await self._watch(max(MIN_RENEW_S, granted / 2))

    async def _map(self) -> Mapping:
        """Renew with the current protocol while the mapping lives, else try them in order."""
        lan = find_lan(self.gateway)
        local_ip = self.local_ip or local_ip_towards(lan.gateway)
        if self.mapping is not None and time.monotonic() < self._expires_at:
            return await self._map_with(self.mapping.protocol, lan, local_ip)
        errors = []
        for protocol in self.protocols:
            try:
                return await self._map_with(protocol, lan, local_ip)
            except PortMapError as exc:
                errors.append(str(exc))
        raise PortMapError("; ".join(errors))

    async def _map_with(self, protocol: str, lan: Lan, local_ip: str) -> Mapping:
        gw, now = lan.gateway, time.monotonic
        wanted = self.mapping.external[1] if self.mapping and self.mapping.protocol == protocol else self.port
        if protocol == "pcp":
            if self.mapping is None or self.mapping.protocol != "pcp":
                self._nonce = pcp.new_nonce()
            r = await pcp.map_udp(gw, local_ip, self._nonce, self.port, wanted, self.lifetime_s)
            self._saw_epoch(r.epoch, protocol)
            external, lifetime = (r.external_ip, r.external_port), r.lifetime_s
        elif protocol == "natpmp":
            address = await natpmp.external_address(gw)
            r = await natpmp.map_udp(gw, self.port, wanted, self.lifetime_s)
            self._saw_epoch(r.epoch, protocol)
            external, lifetime = (address.external_ip, r.external_port), r.lifetime_s
        else:
            try:
                if self._igd is None:
                    self._igd = await upnp.discover(lan, local_ip)
                port, lifetime = await upnp.add_mapping(self._igd, local_ip, self.port, wanted, self.lifetime_s)
                external = (await upnp.external_ip(self._igd), port)
            except PortMapError:
                self._igd = None  # search again next time: the router may have moved or restarted
                raise
        self._expires_at = now() + (lifetime or self.lifetime_s)
        return Mapping(protocol, (local_ip, self.port), external, lifetime, gw)

    def _saw_epoch(self, epoch: int, protocol: str) -> bool:
        """Record the router's epoch; True if it restarted since the last answer."""
        now = time.monotonic()
        restarted = self._epoch is not None and epoch_restarted(*self._epoch, epoch, now)
        if restarted:
            log.info("port mapping: the %s server restarted (epoch %d after %d)", NAMES[protocol], epoch,
                     self._epoch[0])
        self._epoch = (epoch, now)
        return restarted

    async def _watch(self, renew_in: float) -> None:
        """Wait until renewal is due; return early if a PCP/NAT-PMP router restarted or
        changed its external address (the loop then maps again at once)."""
        due = time.monotonic() + renew_in
        while (left := due - time.monotonic()) > 0:
            await asyncio.sleep(min(left, self.check_s))
            if time.monotonic() >= due or self.mapping is None or self.mapping.protocol == "upnp":
                continue
            try:
                if await self._router_changed(self.mapping):
                    return
            except PortMapError as exc:  # not fatal: the renewal will tell
                log.debug("port mapping: epoch check: %s", exc)

    async def _router_changed(self, mapping: Mapping) -> bool:
        if mapping.protocol == "pcp":
            return self._saw_epoch((await pcp.announce(mapping.gateway, mapping.internal[0])).epoch, "pcp")
        r = await natpmp.external_address(mapping.gateway)
        return self._saw_epoch(r.epoch, "natpmp") or r.external_ip != mapping.external[0]

    async def _delete(self, mapping: Mapping) -> None:
        gw, (local_ip, port) = mapping.gateway, mapping.internal
        if mapping.protocol == "pcp":
            await pcp.map_udp(gw, local_ip, self._nonce, port, 0, 0, waits=DELETE_WAITS_S)
        elif mapping.protocol == "natpmp":
            await natpmp.map_udp(gw, port, 0, 0, waits=DELETE_WAITS_S)
        elif self._igd is not None:
            await upnp.delete_mapping(self._igd, mapping.external[1])

    def _set(self, mapping: Mapping | None) -> None:
        old, self.mapping = self.mapping, mapping
        if mapping is None:
            self._epoch = None
        if (old.external if old else None) == (mapping.external if mapping else None):
            return
        log.info("port mapping: %s", f"{mapping.protocol} {mapping.external[0]}:{mapping.external[1]} "
                 f"-> {mapping.internal[0]}:{mapping.internal[1]}" if mapping else "none")
        if self.on_change is not None:
            try:
                self.on_change(mapping)
            except Exception:  # a bug in the callback must not stop the renewals
                log.exception("port mapping: on_change failed")


async def probe(*, gateway: str | None = None, local_ip: str | None = None,
                protocols: Sequence[str] = PROTOCOLS) -> dict:
    """Which protocols the gateway answers, concurrently, leaving no mapping behind:
    ``{"gateway": ip, "<protocol>": {"ok": bool, "external_ip": str | None, "error": str | None}}``.

    NAT-PMP asks for the external address and UPnP calls ``GetExternalIPAddress``; PCP has
    no such request, so it maps a throw-away port (bound here while it exists) for 60 s
    and deletes it at once."""
    try:
        lan = find_lan(gateway)
        ip = local_ip or local_ip_towards(lan.gateway)
    except PortMapError as exc:
        return {"gateway": gateway, **{p: {"ok": False, "external_ip": None, "error": str(exc)} for p in protocols}}

    async def pcp_probe() -> str:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as placeholder:
            placeholder.bind((ip, 0))
            port, nonce = placeholder.getsockname()[1], pcp.new_nonce()
            r = await pcp.map_udp(lan.gateway, ip, nonce, port, port, 60)
            try:
                await pcp.map_udp(lan.gateway, ip, nonce, port, 0, 0, waits=DELETE_WAITS_S)
            except PortMapError as exc:
                log.info("port mapping probe: deleting the PCP test mapping failed: %s", exc)
            return r.external_ip

    async def natpmp_probe() -> str:
        return (await natpmp.external_address(lan.gateway)).external_ip

    async def upnp_probe() -> str:
        return await upnp.external_ip(await upnp.discover(lan, ip))

    probes = {"pcp": pcp_probe, "natpmp": natpmp_probe, "upnp": upnp_probe}
    results = await asyncio.gather(*(probes[p]() for p in protocols), return_exceptions=True)
    out: dict = {"gateway": lan.gateway}
    for protocol, result in zip(protocols, results):
        if isinstance(result, PortMapError):
            out[protocol] = {"ok": False, "external_ip": None, "error": str(result)}
        elif isinstance(result, BaseException):
            raise result
        else:
            out[protocol] = {"ok": True, "external_ip": result, "error": None}
    return out
