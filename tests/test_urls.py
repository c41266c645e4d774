"""Super peer URLs (spec §6.2.1): hosts are checked and IP literals canonical at parse time."""

from __future__ import annotations

import asyncio

import pytest

from drasyl.errors import ConfigError
from drasyl.node import Node
from drasyl.urls import SuperPeerUrl

KEY = "5b" * 32


def parse(address: str) -> SuperPeerUrl:
    return SuperPeerUrl.parse(f"udp://{address}?publicKey={KEY}&networkId=1&tcpPort=8443")


@pytest.mark.parametrize("address, host", [
    ("[2001:DB8::0001]:22527", "2001:db8::1"),
    ("[::ffff:192.0.2.1]:22527", "::ffff:c000:201"),
    ("192.0.2.1:22527", "192.0.2.1"),
    ("sp.example.org:22527", "sp.example.org"),
    ("sp-1.example.org.:22527", "sp-1.example.org."),
])
def test_hosts_are_kept_in_the_form_the_kernel_reports(address, host):
    url = parse(address)
    assert url.host == host
    assert SuperPeerUrl.parse(str(url)) == url


@pytest.mark.parametrize("address", [
    "a..b:22527", "-sp.example.org:22527", "sp-.example.org:22527", "exa mple.org:22527",
    "999.1.1.1:22527", "[192.0.2.1]:22527", "[2001:db8::zz]:22527", f"{'a' * 64}.org:22527",
    "sp.example.org/x:22527",
])
def test_bad_hosts_are_a_config_error(address):
    with pytest.raises(ConfigError, match="super peer URL"):
        parse(address)


def test_a_url_object_built_by_hand_is_checked_and_canonical_too():
    assert SuperPeerUrl("2001:DB8::0100", 22527, bytes(32)).host == "2001:db8::100"
    with pytest.raises(ConfigError):
        SuperPeerUrl("a..b", 22527, bytes(32))


def test_node_start_with_a_bad_host_is_one_clear_error(ids):
    async def start() -> None:
        await Node.start(ids["id_2"], f"udp://a..b:22527?publicKey={KEY}", udp_port=0, udp_addrs=["127.0.0.1"])

    with pytest.raises(ConfigError, match="a..b"):
        asyncio.run(start())
