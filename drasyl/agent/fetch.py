"""Fetching a network config's text from its URL (agent.md §3 "Fetching and refresh").

``file://``: the path is everything after ``file://``, not percent-decoded, so
``file://rel/x.toml`` is relative to the working directory (as in drasyl-rs).
``http://``/``https://``: GET with ``drasyl-pk: <own public key hex>`` and
``Connection: close``; basic auth when the URL has a user name and a password; redirects
(any 3xx with ``Location``, relative ones resolved) followed up to 5 times, the credentials
taken from each hop's own URL; non-2xx is an error. The whole fetch, redirects and body
included, has a 5 s timeout. The agent's one client session is made at the first http(s) fetch
(:class:`OnDemandSession`): aiohttp's client is 4 MiB of RSS an agent with file:// configs
does not need. The body must be UTF-8. Every failure is a :class:`FetchError`
whose message never contains the URL's password (:func:`redact_url`).

Deliberate differences from drasyl-rs: user name and password are percent-decoded before
basic auth (drasyl-rs sends them still encoded, so ``p%40ss`` never matched ``p@ss``); a
redirect to anything but http(s) is refused (drasyl-rs would try it); 5 redirects are followed
(drasyl-rs gives up at the 5th); a leading UTF-8 BOM is dropped; bodies over 16 MiB are
refused; TLS uses the system's trust store (drasyl-rs bundles Mozilla's roots).
"""

from __future__ import annotations

import asyncio
import base64
import re
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from ..errors import DrasylError

FETCH_TIMEOUT_S = 5.0
MAX_REDIRECTS = 5
MAX_BODY_BYTES = 16 << 20

_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^/?#]*)@")


class FetchError(DrasylError):
    """A network config could not be fetched; the message names the URL without its password."""


class OnDemandSession:
    """An aiohttp client session (no timeout of its own: each fetch is bounded) made at the
    first request; :meth:`close` closes it if it was made."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def get(self, url: URL, **kwargs: Any) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        return self._session.get(url, **kwargs)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def redact_url(url: str) -> str:
    """The URL with a password in its user info replaced by ``***`` (for logs, errors, status)."""
    match = _USERINFO.match(url)
    if match is None or ":" not in match[2]:
        return url
    user = match[2].partition(":")[0]
    return f"{match[1]}{user}:***@{url[match.end():]}"


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
                raise FetchError(f"Unsupported URL scheme: {redact_url(url)} (use file://, http:// or https://)")
    except TimeoutError:
        raise FetchError(f"timed out after {timeout_s:g} s fetching {redact_url(url)}") from None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FetchError(f"{redact_url(url)} is not UTF-8 text (invalid byte at offset {exc.start})") from None
    return text.removeprefix("\ufeff")


async def _read_file(url: str) -> bytes:
    path = url[len("file://"):]
    try:
        return await asyncio.to_thread(Path(path).read_bytes)
    except OSError as exc:
        raise FetchError(f"cannot read network config file {path!r} (from {redact_url(url)}): "
                         f"{exc.strerror or exc}") from None


async def _fetch_http(url: str, own_pk_hex: str, session: aiohttp.ClientSession | OnDemandSession) -> bytes:
    try:
        current = URL(url)
    except ValueError as exc:
        raise FetchError(f"invalid URL {redact_url(url)}: {exc}") from None
    for _hop in range(MAX_REDIRECTS + 1):
        headers = {"drasyl-pk": own_pk_hex, "Connection": "close"}
        if current.user and current.password:
            credentials = f"{current.user}:{current.password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode()
        shown = redact_url(str(current))
        try:
            async with session.get(current.with_user(None), headers=headers, allow_redirects=False) as response:
                location = response.headers.get("Location")
                if 300 <= response.status < 400 and location is not None:
                    current = _redirect_target(current, location, shown)
                    continue
                if not 200 <= response.status < 300:
                    status = f"{response.status} {response.reason or ''}".rstrip()
                    raise FetchError(f"HTTP request failed with status {status}: {shown}")
                return await _read_body(response, shown)
        except (aiohttp.ClientError, ValueError) as exc:
            raise FetchError(f"cannot fetch {shown}: {_describe(exc)}") from None
    raise FetchError(f"Too many redirects (max {MAX_REDIRECTS}): {redact_url(url)}")


def _redirect_target(current: URL, location: str, shown: str) -> URL:
    try:
        target = current.join(URL(location))
    except ValueError as exc:
        raise FetchError(f"{shown} redirects to an invalid URL: {exc}") from None
    if target.scheme not in ("http", "https"):
        raise FetchError(f"{shown} redirects to {redact_url(str(target))}: only http and https are followed")
    return target


async def _read_body(response: aiohttp.ClientResponse, shown: str) -> bytes:
    body = bytearray()
    async for chunk in response.content.iter_chunked(1 << 16):
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise FetchError(f"{shown}: response larger than {MAX_BODY_BYTES >> 20} MiB")
    return bytes(body)


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
