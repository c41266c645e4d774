"""UPnP-IGD: SSDP discovery, the device description, and the three SOAP actions we need
(``AddPortMapping``, ``DeletePortMapping``, ``GetExternalIPAddress``) on WANIPConnection:1/2
(or WANPPPConnection:1).

A small client of our own on aiohttp (already a dependency) rather than async-upnp-client:
that library is well kept but brings its own dependency tree (voluptuous, defusedxml,
python-didl-lite, ...) and a full UPnP control point, for three SOAP calls.

Everything a LAN device sends is untrusted: SSDP answers and the description are size
bounded and read with timeouts, redirects are not followed, no proxy from the environment
is used, and every URL (LOCATION, URLBase, controlURL) must be ``http://`` to an IPv4
literal that is the default gateway or on the LAN prefixes (:class:`.net.Lan`): someone on
the LAN could otherwise point us at any host. XML is parsed by the standard library's
expat only after refusing any ``<!DOCTYPE``/``<!ENTITY`` (a UPnP document has none), so
neither external entities nor entity expansion can happen.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit
from xml.etree import ElementTree
from xml.sax.saxutils import escape

import aiohttp

from .net import Lan, PortMapError

SSDP_ADDR = ("239.255.255.250", 1900)
SEARCH_TARGETS = ("urn:schemas-upnp-org:device:InternetGatewayDevice:2",
                  "urn:schemas-upnp-org:device:InternetGatewayDevice:1")
#: Services in order of preference.
SERVICES = ("urn:schemas-upnp-org:service:WANIPConnection:2",
            "urn:schemas-upnp-org:service:WANIPConnection:1",
            "urn:schemas-upnp-org:service:WANPPPConnection:1")
SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
CONTROL_NS = "urn:schemas-upnp-org:control-1-0"
MAX_SSDP = 2048
MAX_XML = 64 * 1024
SEARCH_S = 3.0
HTTP_TIMEOUT_S = 5.0
DESCRIPTION = "drasyl"
ERR_CONFLICT = 718
ERR_ONLY_PERMANENT = 725


class UPnPError(PortMapError):
    """A SOAP fault: the router's UPnP error code and description."""

    def __init__(self, code: int, description: str, action: str) -> None:
        super().__init__(f"UPnP {action}: error {code} ({description})")
        self.code = code


@dataclass(frozen=True)
class Gateway:
    """An Internet Gateway Device's connection service, found by :func:`discover`."""

    location: str
    control_url: str
    service_type: str


# --- codecs -------------------------------------------------------------------------------


def msearch(target: str) -> bytes:
    return (f"M-SEARCH * HTTP/1.1\r\nHOST: {SSDP_ADDR[0]}:{SSDP_ADDR[1]}\r\n"
            f'MAN: "ssdp:discover"\r\nMX: 1\r\nST: {target}\r\n\r\n').encode()


def parse_ssdp_response(data: bytes) -> dict[str, str]:
    """Headers (lower-case names) of an SSDP ``HTTP/1.1 200`` answer that has a LOCATION."""
    if len(data) > MAX_SSDP:
        raise PortMapError(f"SSDP answer too long ({len(data)} bytes)")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise PortMapError("SSDP answer is not ASCII") from None
    lines = text.split("\r\n")
    status = lines[0].split(None, 2)
    if len(status) < 2 or status[0].upper() != "HTTP/1.1" or status[1] != "200":
        raise PortMapError(f"SSDP answer is not 'HTTP/1.1 200': {lines[0][:60]!r}")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    if not headers.get("location"):
        raise PortMapError("SSDP answer without LOCATION")
    return headers


def check_url(url: str, lan: Lan) -> str:
    """``url`` if it is ``http://<IPv4 on the LAN>[:port]/...`` without credentials; else raise.
    Host names are refused: resolving them could lead anywhere."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise PortMapError(f"invalid URL {url[:200]!r}") from None
    if parts.scheme != "http" or parts.username is not None or parts.password is not None:
        raise PortMapError(f"refusing URL {url[:200]!r}: only plain http:// without credentials")
    host = parts.hostname or ""
    if not lan.contains(host):
        raise PortMapError(f"refusing URL {url[:200]!r}: {host or 'no host'} is neither the gateway "
                           f"{lan.gateway} nor on its LAN")
    if port == 0:
        raise PortMapError(f"refusing URL {url[:200]!r}: port 0")
    return url


def parse_xml(data: bytes) -> ElementTree.Element:
    """Parse an untrusted document: no DTD at all, bounded size, clear errors."""
    if len(data) > MAX_XML:
        raise PortMapError(f"XML document too large ({len(data)} bytes > {MAX_XML})")
    try:
        text = data.decode("utf-8")  # what UPnP requires; also keeps expat off UTF-16 (no NULs)
    except UnicodeDecodeError:
        raise PortMapError("XML document is not UTF-8") from None
    if "\0" in text:
        raise PortMapError("XML document contains NUL bytes")
    upper = text.upper()
    if "<!DOCTYPE" in upper or "<!ENTITY" in upper:
        raise PortMapError("XML document with a DTD or entity declarations refused")
    try:
        return ElementTree.fromstring(data)
    except ElementTree.ParseError as exc:
        raise PortMapError(f"invalid XML: {exc}") from None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child_text(element: ElementTree.Element, name: str) -> str | None:
    for child in element:
        if _local(child.tag) == name:
            return (child.text or "").strip()
    return None


def parse_description(data: bytes, location: str, lan: Lan) -> Gateway:
    """The preferred WAN connection service of a device description, its control URL
    resolved (against URLBase or LOCATION) and checked to be on the LAN."""
    root = parse_xml(data)
    base = location
    found: dict[str, str] = {}
    for element in root.iter():
        name = _local(element.tag)
        if name == "URLBase" and element.text and element.text.strip():
            base = element.text.strip()
        elif name == "service":
            kind, control = _child_text(element, "serviceType"), _child_text(element, "controlURL")
            if kind in SERVICES and control and kind not in found:
                found[kind] = control
    for kind in SERVICES:
        if kind in found:
            control = check_url(urljoin(check_url(base, lan), found[kind]), lan)
            return Gateway(location, control, kind)
    raise PortMapError("the device description has no WANIPConnection or WANPPPConnection service")


def soap_body(service_type: str, action: str, args: dict[str, str | int]) -> bytes:
    """The SOAP envelope of ``action`` with ``args`` (values XML-escaped)."""
    inner = "".join(f"<{k}>{escape(str(v))}</{k}>" for k, v in args.items())
    return (f'<?xml version="1.0"?>\r\n<s:Envelope xmlns:s="{SOAP_ENV}" '
            f's:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/"><s:Body>'
            f'<u:{action} xmlns:u="{escape(service_type)}">{inner}</u:{action}>'
            f"</s:Body></s:Envelope>").encode()


def parse_soap_response(data: bytes, action: str) -> dict[str, str]:
    """The out-arguments of ``<action>Response``; :class:`UPnPError` for a fault."""
    root = parse_xml(data)
    body = next((e for e in root if _local(e.tag) == "Body"), None) if _local(root.tag) == "Envelope" else None
    if body is None:
        raise PortMapError(f"UPnP {action}: the answer is not a SOAP envelope")
    for element in body:
        name = _local(element.tag)
        if name == f"{action}Response":
            return {_local(c.tag): (c.text or "").strip() for c in element}
        if name == "Fault":
            upnp = next((e for e in element.iter() if _local(e.tag) == "UPnPError"), None)
            code = _child_text(upnp, "errorCode") if upnp is not None else None
            text = (_child_text(upnp, "errorDescription") if upnp is not None else None) or "no description"
            if code is None or not code.isdigit():
                raise PortMapError(f"UPnP {action}: SOAP fault without a UPnP error code")
            raise UPnPError(int(code), text[:200], action)
    raise PortMapError(f"UPnP {action}: no {action}Response in the answer")


# --- I/O ----------------------------------------------------------------------------------


class _Search(asyncio.DatagramProtocol):
    def __init__(self, lan: Lan) -> None:
        self.lan = lan
        self.found: asyncio.Queue[str] = asyncio.Queue()
        self.rejected: str | None = None

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        try:
            if not self.lan.contains(addr[0]):
                raise PortMapError(f"SSDP answer from {addr[0]}, not on the LAN")
            headers = parse_ssdp_response(data)
            self.found.put_nowait(check_url(headers["location"], self.lan))
        except PortMapError as exc:
            self.rejected = str(exc)


async def discover(lan: Lan, local_ip: str, timeout: float = SEARCH_S) -> Gateway:
    """Search the LAN for an IGD and read its description; the first usable one wins."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(local_ip))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 2)
        sock.bind((local_ip, 0))
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise PortMapError(f"UPnP: cannot open an SSDP socket on {local_ip}: {exc}") from None
    loop = asyncio.get_running_loop()
    transport, search = await loop.create_datagram_endpoint(lambda: _Search(lan), sock=sock)
    deadline = loop.time() + timeout
    tried: set[str] = set()
    errors: list[str] = []
    try:
        for target in SEARCH_TARGETS:
            transport.sendto(msearch(target), SSDP_ADDR)
        while (left := deadline - loop.time()) > 0:
            try:
                location = await asyncio.wait_for(search.found.get(), left)
            except asyncio.TimeoutError:
                break
            if location in tried:
                continue
            tried.add(location)
            try:
                data, _ = await _http(location, "GET")
                return parse_description(data, location, lan)
            except PortMapError as exc:
                errors.append(str(exc))
    finally:
        transport.close()
    if errors:
        raise PortMapError(f"UPnP: no usable gateway description: {errors[-1]}")
    detail = f" (last answer rejected: {search.rejected})" if search.rejected else ""
    raise PortMapError(f"UPnP: no Internet Gateway Device answered SSDP within {timeout:g} s{detail}")


async def _http(url: str, method: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[bytes, int]:
    """(body, status) of one request: no redirects, no proxy, bounded size and time."""
    timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
    try:
        async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as session:
            async with session.request(method, url, data=body, headers=headers, allow_redirects=False) as resp:
                if resp.content_length is not None and resp.content_length > MAX_XML:
                    raise PortMapError(f"{url}: answer too large ({resp.content_length} bytes)")
                data = bytearray()
                async for chunk in resp.content.iter_chunked(8192):
                    data += chunk
                    if len(data) > MAX_XML:
                        raise PortMapError(f"{url}: answer larger than {MAX_XML} bytes")
                if resp.status not in (200, 500):  # SOAP faults come with 500
                    raise PortMapError(f"{url}: HTTP status {resp.status}")
                return bytes(data), resp.status
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
        raise PortMapError(f"{url}: {type(exc).__name__} {exc}".rstrip()) from None


async def soap(gateway: Gateway, action: str, args: dict[str, str | int]) -> dict[str, str]:
    """Call ``action`` on the gateway's connection service; its out-arguments."""
    headers = {"Content-Type": 'text/xml; charset="utf-8"',
               "SOAPAction": f'"{gateway.service_type}#{action}"'}
    data, _ = await _http(gateway.control_url, "POST", soap_body(gateway.service_type, action, args), headers)
    return parse_soap_response(data, action)


async def external_ip(gateway: Gateway) -> str:
    """``GetExternalIPAddress``, validated as a usable IPv4 address."""
    value = (await soap(gateway, "GetExternalIPAddress", {})).get("NewExternalIPAddress", "")
    try:
        ip = ipaddress.IPv4Address(value)
    except ValueError:
        raise PortMapError(f"UPnP: the gateway reports no valid external address ({value[:50]!r})") from None
    if ip.is_unspecified or ip.is_multicast or ip.is_loopback:
        raise PortMapError(f"UPnP: the gateway reports an unusable external address {ip}")
    return str(ip)


async def add_mapping(gateway: Gateway, internal_client: str, internal_port: int, external_port: int,
                      lifetime_s: int) -> tuple[int, int]:
    """``AddPortMapping`` for UDP; (external port, lease s). Tries two random external ports
    when the wanted one is taken (718), and a permanent lease where only those are
    supported (725; the caller then deletes it on stop)."""
    async def add(port: int) -> tuple[int, int]:
        args = {"NewRemoteHost": "", "NewExternalPort": port, "NewProtocol": "UDP",
                "NewInternalPort": internal_port, "NewInternalClient": internal_client, "NewEnabled": 1,
                "NewPortMappingDescription": DESCRIPTION, "NewLeaseDuration": lifetime_s}
        try:
            await soap(gateway, "AddPortMapping", args)
            return port, lifetime_s
        except UPnPError as exc:
            if exc.code != ERR_ONLY_PERMANENT or not lifetime_s:
                raise
        await soap(gateway, "AddPortMapping", {**args, "NewLeaseDuration": 0})
        return port, 0

    for port in (external_port, random.randint(1024, 65535)):
        try:
            return await add(port)
        except UPnPError as exc:
            if exc.code != ERR_CONFLICT:
                raise
    return await add(random.randint(1024, 65535))


async def delete_mapping(gateway: Gateway, external_port: int) -> None:
    await soap(gateway, "DeletePortMapping",
               {"NewRemoteHost": "", "NewExternalPort": external_port, "NewProtocol": "UDP"})
