"""The network configs users copy: contrib/network-examples/*.toml and the full configs in
docs/network-config.md parse with the agent's own validator, without warnings, and mean what
the documentation says they mean (checked with the agent's own policy code)."""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Network
from itertools import combinations
from pathlib import Path

import pytest

from drasyl.agent.netconfig import NetworkConfig, parse_network_config
from drasyl.agent.policy import IN, OUT, KernelRoute, PolicyTables, allowed, desired_state

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "contrib" / "network-examples"
DOC = ROOT / "docs" / "network-config.md"
EXAMPLE_NAMES = ("office-gateway.toml", "full-mesh.toml", "admin-servers.toml")
_TOML_BLOCK = re.compile(r"^```toml\n(.*?)^```", re.DOTALL | re.MULTILINE)
_FULL_CONFIG = re.compile(r"^network\s*=", re.MULTILINE)


def load(name: str) -> NetworkConfig:
    path = EXAMPLES / name
    return parse_network_config(path.read_text(encoding="utf-8"), str(path))


def pk_of(cfg: NetworkConfig, hostname: str) -> bytes:
    (node,) = [n for n in cfg.nodes if n.hostname == hostname]
    return node.pk


def ip(text: str) -> int:
    return int(IPv4Address(text))


def names(cfg: NetworkConfig, hostname: str) -> set[str]:
    state = desired_state(cfg, pk_of(cfg, hostname))
    return {name for _ip, name in state.hostnames}


# --- every example ----------------------------------------------------------------------------


def test_the_documented_examples_are_exactly_the_files():
    assert sorted(p.name for p in EXAMPLES.glob("*.toml")) == sorted(EXAMPLE_NAMES)


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_example_parses_without_warnings(name):
    cfg = load(name)
    assert cfg.warnings == ()
    assert cfg.name and cfg.nodes and cfg.policies


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_example_is_documented(name):
    assert f"contrib/network-examples/{name}" in DOC.read_text(encoding="utf-8")


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_every_member_gets_a_state_and_the_tables_merge_without_conflicts(name):
    cfg = load(name)
    for node in cfg.nodes:
        state = desired_state(cfg, node.pk)
        assert state.ip == node.ip and state.subnet == cfg.subnet
        assert (node.ip, node.hostname) in state.hostnames  # a node always knows itself
        assert PolicyTables({"example": state}).conflicts == ()


def test_examples_use_distinct_subnets_and_keys():
    configs = [load(name) for name in EXAMPLE_NAMES]
    for a, b in combinations(configs, 2):
        assert not a.subnet.overlaps(b.subnet)
    keys = [node.pk for cfg in configs for node in cfg.nodes]
    assert len(keys) == len(set(keys))


# --- office-gateway ---------------------------------------------------------------------------

LAN = IPv4Network("192.168.50.0/24")


def test_office_laptops_get_the_lan_route_via_the_gateway():
    cfg = load("office-gateway.toml")
    gw = cfg.node(pk_of(cfg, "office-gw"))
    for laptop in ("alice-laptop", "bob-laptop", "carol-laptop"):
        state = desired_state(cfg, pk_of(cfg, laptop))
        assert state.routes == (KernelRoute(LAN, IPv4Address("10.20.0.1")),)
        assert gw.ip == IPv4Address("10.20.0.1")
        assert state.served == ()
        tables = PolicyTables({"office": state})
        assert tables.egress(int(state.ip), ip("192.168.50.20")) == gw.pk
        assert tables.ingress_ok(gw.pk, ip("192.168.50.20"), int(state.ip))


def test_office_gateway_forwards_for_staff_only_and_installs_no_route_itself():
    cfg = load("office-gateway.toml")
    gw_pk = pk_of(cfg, "office-gw")
    state = desired_state(cfg, gw_pk)
    assert state.served == (IPv4Network("192.168.50.0/24"),) and state.routes == ()
    alice = cfg.node(pk_of(cfg, "alice-laptop"))
    rules = {(r.direction, r.source, r.dest): r.allow for r in state.access_rules}
    assert rules[OUT, LAN, IPv4Network(alice.ip)] and rules[IN, IPv4Network(alice.ip), LAN]
    tables = PolicyTables({"office": state})
    assert tables.ingress_ok(alice.pk, int(alice.ip), ip("192.168.50.20"))
    # a packet for the LAN from the laptop's peer but with a forged source is dropped
    assert not tables.ingress_ok(alice.pk, ip("10.20.0.12"), ip("192.168.50.20"))


def test_office_staff_talk_to_each_other_and_to_the_gateway():
    cfg = load("office-gateway.toml")
    staff = ["alice-laptop", "bob-laptop", "carol-laptop"]
    for a, b in combinations(staff + ["office-gw"], 2):
        assert allowed(cfg, pk_of(cfg, a), pk_of(cfg, b))
    assert names(cfg, "alice-laptop") == {*staff, "office-gw"}


# --- full-mesh --------------------------------------------------------------------------------


def test_full_mesh_everyone_talks_to_everyone():
    cfg = load("full-mesh.toml")
    assert any(not node.groups for node in cfg.nodes)  # ALL also matches nodes without groups
    for a in cfg.nodes:
        for b in cfg.nodes:
            assert allowed(cfg, a.pk, b.pk)
        assert names(cfg, a.hostname) == {n.hostname for n in cfg.nodes}
        state = desired_state(cfg, a.pk)
        assert all(rule.allow for rule in state.access_rules)
        assert state.routes == () and state.served == ()


# --- admin-servers ----------------------------------------------------------------------------

ADMINS = ("admin-alice", "admin-bob")
SERVERS = ("web-1", "db-1", "backup-1")


def test_admin_servers_servers_do_not_talk_to_each_other():
    cfg = load("admin-servers.toml")
    for a, b in combinations(SERVERS, 2):
        assert not allowed(cfg, pk_of(cfg, a), pk_of(cfg, b))
    web = desired_state(cfg, pk_of(cfg, "web-1"))
    db = cfg.node(pk_of(cfg, "db-1"))
    assert PolicyTables({"servers": web}).egress(int(web.ip), int(db.ip)) is None


def test_admin_servers_admins_reach_servers_and_each_other():
    cfg = load("admin-servers.toml")
    for admin in ADMINS:
        for other in ADMINS + SERVERS:
            assert allowed(cfg, pk_of(cfg, admin), pk_of(cfg, other))
    alice = desired_state(cfg, pk_of(cfg, "admin-alice"))
    web = cfg.node(pk_of(cfg, "web-1"))
    assert PolicyTables({"servers": alice}).egress(int(alice.ip), int(web.ip)) == web.pk


def test_admin_servers_policies_have_no_direction_and_names_follow_them():
    cfg = load("admin-servers.toml")
    assert allowed(cfg, pk_of(cfg, "web-1"), pk_of(cfg, "admin-alice"))  # as documented
    assert names(cfg, "web-1") == {"web-1", *ADMINS}
    assert names(cfg, "admin-bob") == {*ADMINS, *SERVERS}


# --- docs/network-config.md -------------------------------------------------------------------


def full_configs_in_doc() -> list[str]:
    return [block for block in _TOML_BLOCK.findall(DOC.read_text(encoding="utf-8"))
            if _FULL_CONFIG.search(block)]


def test_the_doc_has_full_network_configs():
    assert full_configs_in_doc()


@pytest.mark.parametrize("index", range(len(full_configs_in_doc()) if DOC.exists() else 0))
def test_every_full_network_config_in_the_doc_parses_without_warnings(index):
    cfg = parse_network_config(full_configs_in_doc()[index], f"{DOC.name} block {index + 1}")
    assert cfg.warnings == ()
