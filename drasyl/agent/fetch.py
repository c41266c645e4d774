"""Fetching a network config's text from its URL (agent.md §3 "Fetching and refresh").

A network config comes from whoever runs the network, often over plain http:// that anyone on
the path can rewrite (:func:`~drasyl.agent.config.is_insecure`), and the agent fetches it as root every 10 s: its
URL, redirects and body are untrusted input.

``file://``: the path is everything after ``file://``, not percent-decoded, so
``file://rel/x.toml`` is relative to the working directory (as in drasyl-rs). Only a regular
file is read: it is opened non-blocking (a FIFO or device cannot stall the open) and refused
unless ``fstat`` says regular file, and at most :data:`MAX_BODY_BYTES` are read.
``http://``/``https://``: GET with ``drasyl-pk: <own public key hex>`` and
``Connection: close``; basic auth when the URL has a user name and a password; redirects
(any 3xx with ``Location``, relative ones resolved) followed up to 5 times, the credentials
taken from each hop's own URL; non-2xx is an error. The whole fetch, redirects and body
included, has a 5 s timeout. The agent's one client session is made at the first http(s) fetch
(:class:`OnDemandSession`): aiohttp's client is 4 MiB of RSS an agent with file:// configs
does not need. The body must be UTF-8. Every failure is a :class:`FetchError`
whose message never contains the URL's password (:func:`~.config.mask_url`; an exception's
text, which names host, port or path as parsed, is left out when the URL text is ambiguous).

Redirects into local address space: a redirect target is resolved (``getaddrinfo``, as aiohttp
does) and refused if its host is ``localhost``/``*.localhost`` or ANY of its addresses is
loopback, link-local, private (RFC 1918, CGNAT 100.64/10, ULA fc00::/7, site-local fec0::/10),
unspecified (0/8), multicast or reserved (IPv4-mapped IPv6 judged by its IPv4 address;
documentation and benchmark ranges count as public). Otherwise a config server could make the
agent, as root, GET a local-only service every 10 s. Exception: the configured URL itself points
into local address space (its host judged the same way, resolved when a redirect needs it); then
the user chose a local server and its redirects may go anywhere. DNS rebinding (the name answers
public to the check, local to the connection) is closed for :class:`OnDemandSession`: its
resolver answers a redirect hop's host with the addresses the check approved. Another
aiohttp session passed in resolves again, so there the check alone holds.

Deliberate differences from drasyl-rs: user name and password are percent-decoded before
basic auth (drasyl-rs sends them still encoded, so ``p%40ss`` never matched ``p@ss``); a
redirect to anything but http(s) is refused (drasyl-rs would try it), and so is one into local
address space (above); 5 redirects are followed (drasyl-rs gives up at the 5th); a leading
UTF-8 BOM is dropped; bodies and files over 4 MiB are refused, and file:// reads regular files
only (drasyl-rs reads anything, ``/dev/zero`` until memory runs out); TLS uses the system's
trust store (drasyl-rs bundles Mozilla's roots).
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import os
import re
import socket
import stat
from collections.abc import Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from ..errors import DrasylError
from .config import mask_url

if TYPE_CHECKING:
    from aiohttp.abc import ResolveResult

FETCH_TIMEOUT_S = 5.0
MAX_REDIRECTS = 5
MAX_BODY_BYTES = 4 << 20

_NON_PUBLIC_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7", "fec0::/10"))
#: Host → addresses the redirect check approved for the current hop (see :class:`_PinnedResolver`).
_PINNED: ContextVar[Mapping[str, list[ResolveResult]]] = ContextVar("drasyl_fetch_pinned", default={})


class FetchError(DrasylError):
    """A network config could not be fetched; the message names the URL without its password."""


class _PinnedResolver(ThreadedResolver):
    """Answers a host the redirect check approved with exactly the approved addresses, so a
    second DNS answer cannot send the connection elsewhere (DNS rebinding)."""

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        pinned = _PINNED.get().get(host.rstrip("."))
        return pinned if pinned is not None else await super().resolve(host, port, family)


class OnDemandSession:
    """An aiohttp client session (no timeout of its own: each fetch is bounded; no DNS cache:
    each redirect hop connects to what its check resolved) made at the first request;
    :meth:`close` closes it if it was made."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def get(self, url: URL, **kwargs: Any) -> Any:
        if self._session is None:
            connector = aiohttp.TCPConnector(resolver=_PinnedResolver(), use_dns_cache=False)
            self._session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None))
        return self._session.get(url, **kwargs)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


async def fetch_config_text(url: str, own_pk_hex: str, session: aiohttp.ClientSession | OnDemandSession,
                            timeout_s: float = FETCH_TIMEOUT_S) -> str:
    """The text of the network config at ``url`` (file, http or https)."""
    scheme = url.partition("://")[0].lower()
    try:
        async with asyncio.timeout(timeout_s):
            if scheme in ("http", "https"):
                body = await _fetch_http(url, own_pk_hex, session)
            elif scheme == "file":
                body = await _read_file(url)
            else:
                raise FetchError(f"Unsupported URL scheme: {mask_url(url)} (use file://, http:// or https://)")
    except TimeoutError:
        raise FetchError(f"timed out after {timeout_s:g} s fetching {mask_url(url)}") from None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FetchError(f"{mask_url(url)} is not UTF-8 text (invalid byte at offset {exc.start})") from None
    return text.removeprefix("\ufeff")


# --- file:// ---------------------------------------------------------------------------------

async def _read_file(url: str) -> bytes:
    shown = mask_url(url)
    where = f"network config file {shown[len('file://'):]!r} (from {shown})"
    try:
        return await asyncio.to_thread(_read_regular_file, url[len("file://"):], where)
    except OSError as exc:
        raise FetchError(f"cannot read {where}: {exc.strerror or type(exc).__name__}") from None


def _read_regular_file(path: str, where: str) -> bytes:
    """At most :data:`MAX_BODY_BYTES` of the regular file at ``path``; non-blocking open, so a
    FIFO or device is refused before anything could wait on it."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FetchError(f"{where} is not a regular file")
        data = bytearray()
        while len(data) <= MAX_BODY_BYTES and (chunk := os.read(fd, MAX_BODY_BYTES + 1 - len(data))):
            data += chunk
    finally:
        os.close(fd)
    if len(data) > MAX_BODY_BYTES:
        raise FetchError(f"{where} is larger than {MAX_BODY_BYTES >> 20} MiB")
    return bytes(data)


# --- http(s):// ------------------------------------------------------------------------------

async def _fetch_http(url: str, own_pk_hex: str, session: aiohttp.ClientSession | OnDemandSession) -> bytes:
    try:
        original = current = URL(url)
    except ValueError as exc:
        raise FetchError(f"invalid URL {mask_url(url)}: {_detail(exc, url)}") from None
    text, token = url, _PINNED.set({})
    try:
        for _hop in range(MAX_REDIRECTS + 1):
            result = await _get(current, text, own_pk_hex, session)
            if isinstance(result, bytes):
                return result
            addresses = await _redirect_addresses(original, result, mask_url(text))
            current, text = result, str(result)
            _PINNED.set({(current.raw_host or "").rstrip("."): addresses})
    finally:
        _PINNED.reset(token)
    raise FetchError(f"Too many redirects (max {MAX_REDIRECTS}): {mask_url(url)}")


async def _get(url: URL, text: str, own_pk_hex: str, session: aiohttp.ClientSession | OnDemandSession) -> bytes | URL:
    """The body of a 2xx response to GET ``url`` (``text`` as written), or a redirect's target."""
    shown = mask_url(text)
    headers = {"drasyl-pk": own_pk_hex, "Connection": "close"}
    if url.user and url.password:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{url.user}:{url.password}".encode()).decode()
    try:
        async with session.get(url.with_user(None), headers=headers, allow_redirects=False) as response:
            location = response.headers.get("Location")
            if 300 <= response.status < 400 and location is not None:
                return _redirect_target(url, location, shown)
            if not 200 <= response.status < 300:
                status = f"{response.status} {response.reason or ''}".rstrip()
                raise FetchError(f"HTTP request failed with status {status}: {shown}")
            return await _read_body(response, shown)
    except (aiohttp.ClientError, ValueError) as exc:
        raise FetchError(f"cannot fetch {shown}: {_detail(exc, text)}") from None


def _redirect_target(current: URL, location: str, shown: str) -> URL:
    try:
        target = current.join(URL(location))
    except ValueError as exc:
        raise FetchError(f"{shown} redirects to an invalid URL: {_detail(exc, location)}") from None
    if target.scheme not in ("http", "https"):
        raise FetchError(f"{shown} redirects to {mask_url(str(target))}: only http and https are followed")
    return target


async def _redirect_addresses(original: URL, target: URL, shown: str) -> list[ResolveResult]:
    """The addresses to connect to for a redirect to ``target``; a :class:`FetchError` if one is
    not public and the configured URL (``original``) was not local either."""
    addresses = await _resolve(target, shown)
    local = _non_public(target.raw_host or "", addresses)
    if local is not None and _non_public(original.raw_host or "", await _resolve(original, shown)) is None:
        raise FetchError(f"{shown} redirects to {mask_url(str(target))}, which is {local}, not a public "
                         f"address: refused (only a config URL that is itself local may redirect there)")
    return addresses


async def _resolve(url: URL, shown: str) -> list[ResolveResult]:
    try:
        return await ThreadedResolver().resolve(url.raw_host or "", url.port or 0, socket.AF_UNSPEC)
    except OSError as exc:
        raise FetchError(f"{shown}: cannot resolve {url.raw_host!r}: {exc.strerror or type(exc).__name__}") from None


def _non_public(host: str, addresses: list[ResolveResult]) -> str | None:
    """What makes ``host`` (resolved to ``addresses``) local: its name or its first non-public
    address; None if it is public."""
    name = host.rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return name
    return next((a["host"] for a in addresses if not _is_public(ipaddress.ip_address(a["host"]))), None)


def _is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not (address.is_loopback or address.is_link_local or address.is_unspecified or address.is_multicast
                or address.is_reserved or any(address in network for network in _NON_PUBLIC_NETWORKS))


async def _read_body(response: aiohttp.ClientResponse, shown: str) -> bytes:
    body = bytearray()
    async for chunk in response.content.iter_chunked(1 << 16):
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise FetchError(f"{shown}: response larger than {MAX_BODY_BYTES >> 20} MiB")
    return bytes(body)


def _detail(exc: BaseException, text: str) -> str:
    """``exc``'s message, unless the URL ``text`` has an ``@`` after its authority and
    :func:`mask_url` had to mask: then the host, port or path a parser read (which the message
    may name) can be part of the password."""
    after_authority = re.split(r"[/?#]", text.partition("://")[2], maxsplit=1)[1:]
    if mask_url(text) != text and "@" in "".join(after_authority):
        return f"{type(exc).__name__} (details withheld: they could show part of the password)"
    return str(exc) or type(exc).__name__
