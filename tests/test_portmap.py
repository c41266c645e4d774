"""drasyl.portmap's codecs and checks on their own: PCP and NAT-PMP bytes, SSDP and SOAP
text, the routing-table reader, and the refusal of malformed or hostile router answers.
The exchange helpers run against real loopback sockets and a real aiohttp server."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct

import pytest
from aiohttp import web

from drasyl.portmap import natpmp, pcp, upnp
from drasyl.portmap.mapper import PortMapper, epoch_restarted
from drasyl.portmap.net import Lan, PortMapError, parse_proc_route, udp_request

LAN = Lan("192.168.1.1", "eth0", (ipaddress.IPv4Network("192.168.1.0/24"),))
NONCE = bytes(range(12))


# --- NAT-PMP ------------------------------------------------------------------------------


def test_natpmp_requests() -> None:
    assert natpmp.external_address_request() == b"\x00\x00"
    assert natpmp.map_request(40000, 40001, 7200) == struct.pack("!BBHHHI", 0, 1, 0, 40000, 40001, 7200)
    with pytest.raises(ValueError):
        natpmp.map_request(0, 1, 1)
    with pytest.raises(ValueError):
        natpmp.map_request(1, 70000, 1)


def test_natpmp_responses() -> None:
    address = natpmp.parse_response(struct.pack("!BBHI4B", 0, 128, 0, 99, 203, 0, 113, 5), 0)
    assert (address.external_ip, address.epoch, address.error) == ("203.0.113.5", 99, None)
    mapped = natpmp.parse_response(struct.pack("!BBHIHHI", 0, 129, 0, 7, 40000, 40002, 3600), 1)
    assert (mapped.internal_port, mapped.external_port, mapped.lifetime_s) == (40000, 40002, 3600)
    refused = natpmp.parse_response(struct.pack("!BBHI", 0, 129, 2, 7), 1)
    assert refused.error == "result 2 (not authorized/refused)"


@pytest.mark.parametrize("data, message", [
    (b"\x00\x80\x00", "too short"),
    (struct.pack("!BBHI4B", 2, 128, 0, 1, 1, 2, 3, 4), "version 2"),
    (struct.pack("!BBHIHHI", 0, 129, 0, 7, 1, 2, 3), "opcode 129, expected 128"),
    (struct.pack("!BBHI4Bx", 0, 128, 0, 1, 1, 2, 3, 4), "13 bytes"),
    (struct.pack("!BBHI4B", 0, 128, 0, 1, 0, 0, 0, 0), "unusable external address 0.0.0.0"),
])
def test_natpmp_rejects(data: bytes, message: str) -> None:
    with pytest.raises(PortMapError, match=message):
        natpmp.parse_response(data, 0)


# --- PCP ----------------------------------------------------------------------------------


def pcp_answer(result: int = 0, nonce: bytes = NONCE, ext: str = "::ffff:203.0.113.7", port: int = 40001,
               opcode: int = 1, version: int = 2, protocol: int = 17, tail: bytes = b"") -> bytes:
    header = struct.pack("!BBBBII12x", version, 0x80 | opcode, 0, result, 600, 1234)
    body = struct.pack("!12sB3xHH16s", nonce, protocol, 40000, port, ipaddress.IPv6Address(ext).packed)
    return header + body + tail


def test_pcp_map_request_layout() -> None:
    data = pcp.map_request(NONCE, "192.168.1.20", 40000, 40000, 7200)
    assert len(data) == 60
    assert data[:4] == b"\x02\x01\x00\x00" and struct.unpack_from("!I", data, 4)[0] == 7200
    assert data[8:24] == ipaddress.IPv6Address("::ffff:192.168.1.20").packed
    assert data[24:36] == NONCE and data[36] == 17 and data[37:40] == b"\0\0\0"
    assert struct.unpack_from("!HH", data, 40) == (40000, 40000)
    assert data[44:60] == ipaddress.IPv6Address("::ffff:0.0.0.0").packed
    assert pcp.announce_request("192.168.1.20")[:8] == b"\x02\x00\x00\x00\x00\x00\x00\x00"
    with pytest.raises(ValueError):
        pcp.map_request(b"short", "192.168.1.20", 1, 1, 1)


def test_pcp_map_response() -> None:
    r = pcp.parse_response(pcp_answer(), 1, NONCE)
    assert (r.external_ip, r.external_port, r.internal_port, r.lifetime_s, r.epoch) == \
        ("203.0.113.7", 40001, 40000, 600, 1234)
    assert pcp.parse_response(pcp_answer(tail=b"\x00" * 8), 1, NONCE).external_port == 40001  # an option
    assert pcp.parse_response(pcp_answer(nonce=b"x" * 12), 1, NONCE) is None  # someone else's mapping
    refused = pcp.parse_response(pcp_answer(result=2), 1, NONCE)
    assert refused.error == "result 2 (NOT_AUTHORIZED)"
    header_only = pcp.parse_response(pcp_answer(result=8)[:24], 1, NONCE)
    assert header_only.error == "result 8 (NO_RESOURCES)"


@pytest.mark.parametrize("data, message", [
    (pcp_answer()[:20], "too short"),
    (pcp_answer()[:40], "MAP answer too short"),
    (pcp_answer() + b"\0", "invalid length"),
    (pcp_answer() + b"\0" * 1100, "invalid length"),
    (pcp_answer(version=0), "version 0"),
    (pcp_answer(opcode=2), "R/opcode 0x82"),
    (pcp_answer(protocol=6), "protocol 6"),
    (pcp_answer(ext="2001:db8::1"), "unusable external address"),
    (pcp_answer(ext="::ffff:0.0.0.0"), "unusable external address"),
])
def test_pcp_rejects(data: bytes, message: str) -> None:
    with pytest.raises(PortMapError, match=message):
        pcp.parse_response(data, 1, NONCE)


def test_epoch_restarted() -> None:
    assert not epoch_restarted(1000, 0.0, 1060, 60.0)
    assert not epoch_restarted(1000, 0.0, 1055, 60.0)  # clocks drift a little
    assert epoch_restarted(1000, 0.0, 5, 60.0)  # went back: rebooted
    assert epoch_restarted(1000, 0.0, 1010, 60.0)  # advanced too little: rebooted in between


# --- the routing table --------------------------------------------------------------------


PROC_ROUTE = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t0001A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0
docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
"""


def test_parse_proc_route() -> None:
    lan = parse_proc_route(PROC_ROUTE)
    assert lan == LAN
    assert lan.contains("192.168.1.1") and lan.contains("192.168.1.77")
    assert not lan.contains("192.168.1.0") and not lan.contains("172.17.0.2") and not lan.contains("gateway")
    assert parse_proc_route(PROC_ROUTE.splitlines()[0] + "\ngarbage\n") is None


# --- UPnP ---------------------------------------------------------------------------------


SSDP_OK = (b"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\nST: urn:schemas-upnp-org:device:"
           b"InternetGatewayDevice:1\r\nLOCATION: http://192.168.1.1:5000/rootDesc.xml\r\n\r\n")


def test_msearch() -> None:
    text = upnp.msearch(upnp.SEARCH_TARGETS[1]).decode()
    assert text.startswith("M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\n")
    assert 'MAN: "ssdp:discover"' in text and text.endswith("InternetGatewayDevice:1\r\n\r\n")


def test_ssdp_response() -> None:
    assert upnp.parse_ssdp_response(SSDP_OK)["location"] == "http://192.168.1.1:5000/rootDesc.xml"
    for junk, message in [(b"NOTIFY * HTTP/1.1\r\n\r\n", "not 'HTTP/1.1 200'"),
                          (b"HTTP/1.1 200 OK\r\nST: x\r\n\r\n", "without LOCATION"),
                          (b"HTTP/1.1 200 OK\r\nLOCATION: \xff\r\n\r\n", "not ASCII"),
                          (SSDP_OK + b"X" * 3000, "too long"),
                          (b"", "not 'HTTP/1.1 200'")]:
        with pytest.raises(PortMapError, match=message):
            upnp.parse_ssdp_response(junk)


@pytest.mark.parametrize("url", ["http://192.168.1.1:5000/rootDesc.xml", "http://192.168.1.20/desc"])
def test_url_on_lan(url: str) -> None:
    assert upnp.check_url(url, LAN) == url


@pytest.mark.parametrize("url", [
    "http://203.0.113.9:5000/rootDesc.xml",  # off the LAN: someone points us elsewhere
    "http://router.lan:5000/rootDesc.xml",  # names could resolve anywhere
    "https://192.168.1.1/desc",
    "file:///etc/passwd",
    "http://user:pw@192.168.1.1/desc",
    "http://192.168.1.1:0/desc",
    "http://192.168.1.1:99999/desc",
    "http://[::1]/desc",
])
def test_url_refused(url: str) -> None:
    with pytest.raises(PortMapError, match="URL"):
        upnp.check_url(url, LAN)


def description(services: str, url_base: str = "") -> bytes:
    return (f'<?xml version="1.0"?><root xmlns="urn:schemas-upnp-org:device-1-0">{url_base}<device>'
            f"<deviceList><device><serviceList>{services}</serviceList></device></deviceList>"
            "</device></root>").encode()


def service(kind: str, control: str) -> str:
    return f"<service><serviceType>{kind}</serviceType><controlURL>{control}</controlURL></service>"


def test_description_prefers_v2_and_resolves() -> None:
    data = description(service(upnp.SERVICES[1], "/ctl/IPConn1") + service(upnp.SERVICES[0], "ctl/IPConn2"))
    gw = upnp.parse_description(data, "http://192.168.1.1:5000/rootDesc.xml", LAN)
    assert (gw.service_type, gw.control_url) == (upnp.SERVICES[0], "http://192.168.1.1:5000/ctl/IPConn2")
    based = description(service(upnp.SERVICES[1], "/ctl"), "<URLBase>http://192.168.1.1:49000/</URLBase>")
    assert upnp.parse_description(based, "http://192.168.1.1:5000/d.xml", LAN).control_url == \
        "http://192.168.1.1:49000/ctl"


@pytest.mark.parametrize("data, message", [
    (description(service(upnp.SERVICES[1], "http://203.0.113.9/ctl")), "neither the gateway"),
    (description(service(upnp.SERVICES[1], "/ctl"), "<URLBase>http://203.0.113.9/</URLBase>"), "neither"),
    (description(service("urn:schemas-upnp-org:service:Layer3Forwarding:1", "/l3f")), "no WANIPConnection"),
    (b"<root>" + b"<a/>" * 20000 + b"</root>", "too large"),
    (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>'
     b"<root>&lol2;</root>", "DTD"),
    (b'<?xml version="1.0"?><!doctype r [<!entity x SYSTEM "file:///etc/passwd">]><root>&x;</root>', "DTD"),
    ('<?xml version="1.0" encoding="UTF-16"?><root/>'.encode("utf-16"), "not UTF-8"),
    ("<\0r\0o\0o\0t\0/\0>\0".encode(), "NUL"),
    (b"<root><unclosed></root>", "invalid XML"),
    (b"\x00\x01junk", "NUL"),
])
def test_description_refused(data: bytes, message: str) -> None:
    with pytest.raises(PortMapError, match=message):
        upnp.parse_description(data, "http://192.168.1.1:5000/rootDesc.xml", LAN)


def test_soap_body() -> None:
    body = upnp.soap_body(upnp.SERVICES[1], "AddPortMapping",
                          {"NewExternalPort": 40000, "NewPortMappingDescription": "a<b&c"}).decode()
    assert '<u:AddPortMapping xmlns:u="urn:schemas-upnp-org:service:WANIPConnection:1">' in body
    assert "<NewExternalPort>40000</NewExternalPort>" in body
    assert "<NewPortMappingDescription>a&lt;b&amp;c</NewPortMappingDescription>" in body
    assert body.startswith('<?xml version="1.0"?>') and body.endswith("</s:Body></s:Envelope>")


def envelope(inner: str) -> bytes:
    return (f'<?xml version="1.0"?><s:Envelope xmlns:s="{upnp.SOAP_ENV}"><s:Body>{inner}'
            "</s:Body></s:Envelope>").encode()


def test_soap_response_and_fault() -> None:
    ok = envelope('<u:GetExternalIPAddressResponse xmlns:u="x"><NewExternalIPAddress>203.0.113.7'
                  "</NewExternalIPAddress></u:GetExternalIPAddressResponse>")
    assert upnp.parse_soap_response(ok, "GetExternalIPAddress") == {"NewExternalIPAddress": "203.0.113.7"}
    fault = envelope("<s:Fault><faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring><detail>"
                     f'<UPnPError xmlns="{upnp.CONTROL_NS}"><errorCode>718</errorCode>'
                     "<errorDescription>ConflictInMappingEntry</errorDescription></UPnPError></detail></s:Fault>")
    with pytest.raises(upnp.UPnPError, match=r"error 718 \(ConflictInMappingEntry\)") as info:
        upnp.parse_soap_response(fault, "AddPortMapping")
    assert info.value.code == 718
    with pytest.raises(PortMapError, match="not a SOAP envelope"):
        upnp.parse_soap_response(b"<html><body>hi</body></html>", "AddPortMapping")
    with pytest.raises(PortMapError, match="no AddPortMappingResponse"):
        upnp.parse_soap_response(envelope("<x/>"), "AddPortMapping")
    with pytest.raises(PortMapError, match="without a UPnP error code"):
        upnp.parse_soap_response(envelope("<s:Fault><detail/></s:Fault>"), "AddPortMapping")


# --- I/O on loopback ----------------------------------------------------------------------


class Router(asyncio.DatagramProtocol):
    """Answers every request with the given datagrams, in order."""

    def __init__(self, answers: list[bytes]) -> None:
        self.answers = answers
        self.requests: list[bytes] = []

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.requests.append(data)
        for answer in self.answers:
            self.transport.sendto(answer, addr)


async def serve_udp(answers: list[bytes]) -> tuple[asyncio.DatagramTransport, Router, int]:
    transport, router = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: Router(answers), local_addr=("127.0.0.1", 0))
    return transport, router, transport.get_extra_info("sockname")[1]


def test_udp_request_skips_junk_and_wrong_nonce() -> None:
    async def run() -> pcp.Response:
        good = pcp_answer()
        transport, router, port = await serve_udp([b"junk", pcp_answer(nonce=b"y" * 12), good])
        try:
            return await udp_request("127.0.0.1", port, b"req", lambda d: pcp.parse_response(d, 1, NONCE), "PCP")
        finally:
            transport.close()
    assert asyncio.run(run()).external_port == 40001


def test_udp_request_silent_and_refused() -> None:
    async def run() -> None:
        transport, _, port = await serve_udp([b"junk"])
        try:
            with pytest.raises(PortMapError, match=r"no answer from 127\.0\.0\.1:\d+ within 0\.3 s "
                                                   r"\(last answer rejected: PCP answer too short"):
                await udp_request("127.0.0.1", port, b"req", lambda d: pcp.parse_response(d, 1, NONCE), "PCP",
                                  waits=(0.1, 0.2))
        finally:
            transport.close()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed:
            closed.bind(("127.0.0.1", 0))
            free = closed.getsockname()[1]
        with pytest.raises(PortMapError, match="refused"):
            await udp_request("127.0.0.1", free, b"req", lambda d: d, "PCP", waits=(1.0,))
    asyncio.run(run())


def test_http_bounds_and_no_redirects() -> None:
    async def run() -> None:
        async def huge(request: web.Request) -> web.Response:
            return web.Response(body=b"<a>" + b"x" * 100_000 + b"</a>")

        async def redirect(request: web.Request) -> web.Response:
            raise web.HTTPFound("http://203.0.113.9/evil")

        async def chunked(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse()
            await resp.prepare(request)
            for _ in range(20):
                await resp.write(b"x" * 8192)
            return resp
        app = web.Application()
        app.router.add_get("/huge", huge)
        app.router.add_get("/chunked", chunked)
        app.router.add_get("/redirect", redirect)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            with pytest.raises(PortMapError, match="too large"):
                await upnp._http(f"http://127.0.0.1:{port}/huge", "GET")
            with pytest.raises(PortMapError, match="larger than 65536"):
                await upnp._http(f"http://127.0.0.1:{port}/chunked", "GET")
            with pytest.raises(PortMapError, match="HTTP status 302"):
                await upnp._http(f"http://127.0.0.1:{port}/redirect", "GET")
        finally:
            await runner.cleanup()
    asyncio.run(run())


def test_mapper_arguments() -> None:
    with pytest.raises(ValueError, match="protocols"):
        PortMapper(1, protocols=("pcp", "smtp"))
    with pytest.raises(ValueError, match="port"):
        PortMapper(0)
    with pytest.raises(ValueError, match="lifetime"):
        PortMapper(1, lifetime_s=10)
