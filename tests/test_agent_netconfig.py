"""Network-config parsing and validation (agent.md §3): one test per error and its message."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from drasyl.agent.netconfig import NetworkConfigError, Node, Policy, Route, parse_network_config

SOURCE = "https://config.example/acme.toml"
PK1, PK2, PK3 = ("1" * 64, "2" * 64, "3" * 64)

EXAMPLE = f"""
network = "10.1.0.0/24"
name    = "Acme Office"

[[node]]
pk       = "{PK1}"
ip       = "10.1.0.1"
hostname = "laptop-alice"
groups   = ["staff"]

[[node]]
pk       = "{PK2}"
ip       = "10.1.0.2"
hostname = "fileserver"
groups   = ["servers"]

[[node]]
pk       = "{PK3}"
ip       = "10.1.0.10"
hostname = "office-gw"
groups   = ["gateways"]

[[route]]
dest   = "192.168.50.0/24"          # office LAN behind office-gw
gw     = "{PK3}"
groups = ["staff"]

[[policy]]
source_groups      = ["staff"]
destination_groups = ["servers", "gateways"]
"""


def node(pk: str = PK1, ip: str = "10.1.0.1", hostname: str = "alice", extra: str = "") -> str:
    return f'[[node]]\npk = "{pk}"\nip = "{ip}"\nhostname = "{hostname}"\n{extra}\n'


def route(dest: str = "192.168.50.0/24", gw: str = PK1, extra: str = "") -> str:
    return f'[[route]]\ndest = "{dest}"\ngw = "{gw}"\n{extra}\n'


def doc(*tables: str, network: str = "10.1.0.0/24") -> str:
    return f'network = "{network}"\n' + "".join(tables)


def error(text: str) -> str:
    with pytest.raises(NetworkConfigError) as info:
        parse_network_config(text, SOURCE)
    assert info.value.source == SOURCE
    message = str(info.value)
    assert message.startswith(f"network config {SOURCE}: "), message
    return message


def test_example_document_parses_to_its_values():
    cfg = parse_network_config(EXAMPLE, SOURCE)
    assert cfg.subnet == IPv4Network("10.1.0.0/24")
    assert cfg.name == "Acme Office"
    assert cfg.nodes == (
        Node(bytes.fromhex(PK1), IPv4Address("10.1.0.1"), "laptop-alice", frozenset({"staff"})),
        Node(bytes.fromhex(PK2), IPv4Address("10.1.0.2"), "fileserver", frozenset({"servers"})),
        Node(bytes.fromhex(PK3), IPv4Address("10.1.0.10"), "office-gw", frozenset({"gateways"})),
    )
    assert cfg.routes == (Route(IPv4Network("192.168.50.0/24"), bytes.fromhex(PK3), frozenset({"staff"})),)
    assert cfg.policies == (Policy(frozenset({"staff"}), frozenset({"servers", "gateways"})),)
    assert cfg.warnings == ()
    assert cfg.source == SOURCE
    assert cfg.node(bytes.fromhex(PK2)).hostname == "fileserver"
    assert cfg.node(b"\x09" * 32) is None


def test_minimal_document_has_defaults():
    cfg = parse_network_config('network = "10.1.0.0/24"', SOURCE)
    assert (cfg.name, cfg.nodes, cfg.routes, cfg.policies) == (None, (), (), ())


def test_unknown_keys_are_ignored_everywhere():
    text = doc(node(extra='colour = "blue"'), route(extra="metric = 5"),
               '[[policy]]\nsource_groups = ["ALL"]\ndestination_groups = ["ALL"]\nports = [22]\n',
               '[extra]\nanything = true\n')
    cfg = parse_network_config("version = 2\n" + text, SOURCE)
    assert len(cfg.nodes) == len(cfg.routes) == len(cfg.policies) == 1


def test_groups_are_a_set():
    cfg = parse_network_config(doc(node(extra='groups = ["a", "b", "a"]')), SOURCE)
    assert cfg.nodes[0].groups == frozenset({"a", "b"})


def test_upper_case_public_key_and_mixed_case_hostname_are_accepted():
    cfg = parse_network_config(doc(node(pk="AB" * 32, hostname="Node-1")), SOURCE)
    assert cfg.nodes[0].pk == b"\xab" * 32
    assert cfg.nodes[0].hostname == "Node-1"  # case preserved


# --- TOML syntax, types and required keys -------------------------------------------------

def test_invalid_toml_names_line():
    message = error('network = "10.1.0.0/24"\n[[node]\npk = "x"\n')
    assert "invalid TOML" in message and "line 2" in message


def test_missing_network():
    assert "top level: missing required key 'network'" in error(node())


def test_network_of_wrong_type():
    assert "'network' must be a string, got integer 10" in error("network = 10\n")


@pytest.mark.parametrize("value", ["10.1.0.0", "10.1.0.0/33", "10.1.0.300/24", "fd00::/64",
                                   "10.1.0.0/255.255.255.0", "010.1.0.0/24", ""])
def test_network_not_an_ipv4_cidr(value):
    assert f"'network' must be an IPv4 network like \"10.1.0.0/24\", got {value!r}" in error(doc(network=value))


def test_name_of_wrong_type():
    assert "top level: 'name' must be a string, got boolean True" in error(doc() + "name = true\n")


def test_node_must_be_array_of_tables():
    assert "'node' must be an array of tables ([[node]]), got string 'x'" in error(doc() + 'node = "x"\n')
    assert "'node' must be an array of tables ([[node]]), got table" in error(doc() + "[node]\npk = 'x'\n")


def test_inline_array_of_node_tables_is_accepted():
    text = doc() + f'node = [{{ pk = "{PK1}", ip = "10.1.0.1", hostname = "a" }}]\n'
    assert parse_network_config(text, SOURCE).nodes[0].hostname == "a"


@pytest.mark.parametrize("key", ["pk", "ip", "hostname"])
def test_node_missing_required_key(key):
    table = {"pk": f'"{PK1}"', "ip": '"10.1.0.1"', "hostname": '"a"'}
    del table[key]
    text = doc(node(), "[[node]]\n" + "".join(f"{k} = {v}\n" for k, v in table.items()))
    assert f"[[node]] #2: missing required key '{key}'" in error(text)


def test_node_ip_of_wrong_type():
    text = doc(f'[[node]]\npk = "{PK1}"\nip = 167837697\nhostname = "a"\n')
    assert "[[node]] #1: 'ip' must be a string, got integer 167837697" in error(text)


@pytest.mark.parametrize("pk, detail", [("12ab", "must be 64 hex characters, got 4"),
                                         ("zz" * 32, "is not hex")])
def test_node_public_key_invalid(pk, detail):
    message = error(doc(node(pk=pk)))
    assert "[[node]] #1: 'pk': public key" in message and detail in message and pk in message


@pytest.mark.parametrize("ip", ["10.1.0.256", "10.1.0", "fd00::1", "10.1.0.01", "10.1.0.1/32"])
def test_node_ip_invalid(ip):
    assert f"[[node]] #1: 'ip' is not an IPv4 address like \"10.1.0.1\": {ip!r}" in error(doc(node(ip=ip)))


def test_groups_must_be_array_of_strings():
    assert "[[node]] #1: 'groups' must be an array, got string 'staff'" in error(doc(node(extra='groups = "staff"')))
    assert "[[node]] #1: 'groups' must be an array of strings, got integer 1 in it" in error(
        doc(node(extra='groups = ["a", 1]')))


@pytest.mark.parametrize("key", ["dest", "gw"])
def test_route_missing_required_key(key):
    lines = {"dest": 'dest = "192.168.50.0/24"\n', "gw": f'gw = "{PK1}"\n'}
    del lines[key]
    assert f"[[route]] #1: missing required key '{key}'" in error(doc(node(), "[[route]]\n" + "".join(lines.values())))


def test_route_dest_not_a_cidr():
    assert "[[route]] #1: 'dest' must be an IPv4 network like \"10.1.0.0/24\", got '192.168.50.1'" in error(
        doc(node(), route(dest="192.168.50.1")))


def test_route_gateway_not_a_public_key():
    assert "[[route]] #1: 'gw': public key must be 64 hex characters" in error(doc(node(), route(gw="abc")))


@pytest.mark.parametrize("key", ["source_groups", "destination_groups"])
def test_policy_missing_required_key(key):
    other = "destination_groups" if key == "source_groups" else "source_groups"
    assert f"[[policy]] #1: missing required key '{key}'" in error(doc(node(), f'[[policy]]\n{other} = ["ALL"]\n'))


# --- duplicates (checked node by node, in document order) ---------------------------------

def test_duplicate_public_key():
    message = error(doc(node(), node(ip="10.1.0.2", hostname="b")))
    assert f"[[node]] #2: duplicate public key: {PK1} (also [[node]] #1)" in message


def test_duplicate_ip_address():
    message = error(doc(node(), node(pk=PK2, hostname="b")))
    assert "[[node]] #2: duplicate IP address: 10.1.0.1 (also [[node]] #1)" in message


def test_duplicate_hostname_names_the_hostname_case_insensitively():
    message = error(doc(node(hostname="fileserver"), node(pk=PK2, ip="10.1.0.2", hostname="FileServer")))
    assert "[[node]] #2: duplicate hostname: 'FileServer' (also [[node]] #1; hostnames are compared " \
           "case-insensitively)" in message
    assert "10.1.0.2" not in message  # drasyl-rs [bug]: it showed the IP instead of the hostname


def test_duplicate_route_destination():
    message = error(doc(node(), route(), route(gw=PK2)))
    assert "[[route]] #2: duplicate route destination: 192.168.50.0/24 (also [[route]] #1)" in message


def test_duplicates_are_reported_before_semantic_errors():
    # node #1 is outside the network, but the duplicate IP of node #3 is a parse error: it wins
    text = doc(node(ip="10.9.0.1"), node(pk=PK2, ip="10.1.0.2", hostname="b"),
               node(pk=PK3, ip="10.1.0.2", hostname="c"))
    assert "duplicate IP address: 10.1.0.2" in error(text)


# --- semantic checks (per node, then per route; first failure wins) -----------------------

def test_ip_not_in_network():
    assert "[[node]] #1: IP address 10.2.0.1 is not in network 10.1.0.0/24" in error(doc(node(ip="10.2.0.1")))


@pytest.mark.parametrize("network, ip", [("10.1.0.0/24", "10.1.0.254"), ("10.1.0.0/16", "10.1.255.254"),
                                         ("10.1.0.0/31", "10.1.0.0")])
def test_ip_reserved_is_broadcast_minus_one(network, ip):
    message = error(doc(node(ip=ip), network=network))
    assert f"[[node]] #1: IP address {ip} is reserved (broadcast - 1 of {network})" in message


def test_single_host_network_reserves_nothing_inside():
    for network, ip in [("10.1.0.1/32", "10.1.0.1"), ("0.0.0.0/32", "0.0.0.0"), ("10.1.0.0/31", "10.1.0.1")]:
        assert parse_network_config(doc(node(ip=ip), network=network), SOURCE).nodes[0].ip == IPv4Address(ip)


@pytest.mark.parametrize("hostname", ["", "-hostname", "hostname-", "host.name", "host_name", "a" * 64,
                                      "h\u00f6st", "\u212aelvin", "space name"])
def test_invalid_hostname(hostname):
    message = error(doc(node(hostname=hostname)))
    assert f"[[node]] #1: invalid hostname: {hostname!r} (1-63 letters, digits or '-', not starting or " \
           f"ending with '-')" in message


@pytest.mark.parametrize("hostname", ["host-name", "host--name", "Node-1", "a" * 63, "0", "9lives"])
def test_valid_hostname(hostname):
    assert parse_network_config(doc(node(hostname=hostname)), SOURCE).nodes[0].hostname == hostname


def test_node_checks_run_node_by_node():
    # node #1: bad hostname; node #2: outside the network -> node #1's error is reported
    text = doc(node(hostname="bad_name"), node(pk=PK2, ip="10.9.0.2", hostname="b"))
    assert "[[node]] #1: invalid hostname" in error(text)


def test_route_dest_host_address():
    message = error(doc(node(), route(dest="10.10.10.5/24")))
    assert "[[route]] #1: invalid network address: 10.10.10.5/24 is a host address (did you mean " \
           "10.10.10.0/24?)" in message


def test_route_gateway_not_found():
    assert f"[[route]] #1: gateway {PK2} not found in nodes" in error(doc(node(), route(gw=PK2)))


def test_node_errors_come_before_route_errors():
    assert "is not in network" in error(doc(node(ip="10.9.0.1"), route(gw=PK2)))


# --- warnings: accepted as drasyl-rs does, but reported ----------------------------------

def warnings(text: str) -> tuple[str, ...]:
    return parse_network_config(text, SOURCE).warnings


def test_network_with_host_bits_is_used_as_its_network():
    cfg = parse_network_config(doc(node(), network="10.1.0.5/24"), SOURCE)
    assert cfg.subnet == IPv4Network("10.1.0.0/24")
    assert cfg.warnings == ("'network' 10.1.0.5/24 has host bits set; using 10.1.0.0/24",)


@pytest.mark.parametrize("ip, kind", [("10.1.0.0", "network"), ("10.1.0.255", "broadcast")])
def test_node_on_network_or_broadcast_address_warns(ip, kind):
    assert warnings(doc(node(ip=ip))) == (
        f"[[node]] #1: IP address {ip} is the {kind} address of 10.1.0.0/24; other hosts may not reach it",)


@pytest.mark.parametrize("dest", ["10.1.0.128/25", "10.0.0.0/8", "10.1.0.2/32"])
def test_route_overlapping_the_overlay_warns(dest):
    assert warnings(doc(node(), route(dest=dest))) == (
        f"[[route]] #1: destination {dest} overlaps the overlay network 10.1.0.0/24; overlay traffic to "
        f"those addresses may be sent to the gateway",)


def test_groups_without_members_warn():
    text = doc(node(extra='groups = ["staff"]'), route(extra='groups = ["ALL", "staf"]'),
               '[[policy]]\nsource_groups = ["ALL", "staff"]\ndestination_groups = ["servers"]\n')
    assert warnings(text) == (
        "[[route]] #1: group 'ALL' has no members ('ALL' means every node only in policies)",
        "[[route]] #1: group 'staf' has no members",
        "[[policy]] #1: group 'servers' has no members",
    )


def test_errors_are_config_errors_of_the_package():
    from drasyl.errors import ConfigError, DrasylError
    with pytest.raises(DrasylError):
        parse_network_config("network = 1", SOURCE)
    assert issubclass(NetworkConfigError, ConfigError)
