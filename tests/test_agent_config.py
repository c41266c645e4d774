"""config.toml of the agent: every load error names the file and the key, edits keep comments."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import tomllib
from pathlib import Path

import pytest

from drasyl.agent.config import (
    ARMED_MTU,
    DEFAULT_SUPER_PEERS,
    AgentConfig,
    AgentConfigError,
    mask_url,
    normalize_url,
)
from drasyl.errors import ConfigError
from drasyl.identity import Identity, pow_difficulty

LOW = 6  # PoW difficulty for tests: generated in milliseconds
REPO = Path(__file__).resolve().parents[1]
SP_PK = "5b4578909bf0ad3565bb5faf843a9f68b325dd87451f6cb747e49d82f6ce5f4c"
SP_PK2 = "bf3572dba7ebb6c5ccd037f3a978707b5d7c5a9b9b01b56b4b9bf059af56a4e0"
SP = f"udp://sp.example.org:22527?publicKey={SP_PK}&networkId=1&tcpPort=8443"


@pytest.fixture(scope="module")
def ident() -> Identity:
    return Identity.generate(LOW)


def identity_table(ident: Identity, sk: str | None = None, pow_value: object = None) -> str:
    sk = ident.secret_key.hex() if sk is None else sk
    return f'[identity]\nsk = "{sk}"\npow = {ident.proof_of_work if pow_value is None else pow_value}\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def load(path: Path, **kw) -> AgentConfig:
    return AgentConfig.load(path, difficulty=kw.pop("difficulty", LOW), **kw)


RICH = """\
# drasyl agent of the office laptop
mtu = 1300  # below the default on purpose
owner = "ops"   # an unknown key of ours
super_peers = [
  # our own super peer
  "{sp}",
]

[identity]
# keep this secret
{identity}
[[network]]
# the office
config_url = "https://user:secret@config.example.com/acme.toml"
disabled = false
name = "Acme"
team = "blue"  # unknown key inside a network

# the lab comes next
[[network]]
config_url = "file:///etc/drasyl/lab.toml"
disabled = true

[extra]
# a table the agent does not know
keep = [1, 2]
"""


def rich(tmp_path: Path, ident: Identity) -> Path:
    body = identity_table(ident).removeprefix("[identity]\n")
    return write(tmp_path, RICH.format(sp=SP, identity=body))


def comments(text: str) -> set[str]:
    """The text of every TOML comment (a '#' at line start or after a blank)."""
    return {m[1].strip() for m in re.finditer(r"(?:^|\s)#(.*)$", text, re.M)}


# --- loading ----------------------------------------------------------------------------------


def test_minimal_file_gets_drasyl_rs_defaults(tmp_path, ident):
    cfg = load(write(tmp_path, identity_table(ident)))
    assert cfg.identity == ident
    assert [str(u) for u in cfg.super_peers] == list(DEFAULT_SUPER_PEERS)
    assert cfg.networks == ()
    assert cfg.mtu == ARMED_MTU == 1345
    assert cfg.warnings == ()


def test_rich_file_loads_with_warnings_for_unknown_keys(tmp_path, ident):
    path = rich(tmp_path, ident)
    cfg = load(path)
    assert cfg.mtu == 1300
    assert [u.public_key.hex() for u in cfg.super_peers] == [SP_PK]
    assert [(n.config_url, n.disabled, n.name) for n in cfg.networks] == [
        ("https://user:secret@config.example.com/acme.toml", False, "Acme"),
        ("file:///etc/drasyl/lab.toml", True, None),
    ]
    assert cfg.warnings == (
        f"{path}: owner: unknown key ignored",
        f"{path}: extra: unknown key ignored",
        f"{path}: network[0].team: unknown key ignored",
    )


def test_example_config_loads_and_gets_its_own_identity(tmp_path):
    """The example has no [identity] (copies must not share one): the first run adds it."""
    path = tmp_path / "config.toml"
    shutil.copy(REPO / "config.example.toml", path)
    with pytest.raises(AgentConfigError, match="identity: missing"):
        load(path)
    path.chmod(0o644)  # as cp leaves it: the secret key must not stay world-readable
    cfg = AgentConfig.load_or_create(path, difficulty=LOW)
    assert cfg.warnings == (f"{path}: was readable by group or others; now mode 0600, as it holds the secret key",)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_text().startswith((REPO / "config.example.toml").read_text())
    assert cfg.mtu == 1345
    assert len(cfg.super_peers) >= 1 and len(cfg.networks) >= 2
    assert all(n.disabled for n in cfg.networks), "the example must not contact a placeholder server"


# One test per config.toml error: (file body after the identity, key named, words in the message).
ERRORS = {
    "syntax": ("mtu = = 1345\n", "TOML syntax error", "line 1, column 7"),
    "mtu_type": ('mtu = "big"\n', "mtu", "expected an integer, got a string 'big'"),
    "mtu_bool": ("mtu = true\n", "mtu", "expected an integer, got a boolean"),
    "mtu_high": ("mtu = 1346\n", "mtu", "1346 is outside 576..1345"),
    "mtu_low": ("mtu = 575\n", "mtu", "575 is outside 576..1345"),
    "sp_type": (f'super_peers = "{SP}"\n', "super_peers", "expected an array, got a string"),
    "sp_empty": ("super_peers = []\n", "super_peers", "empty"),
    "sp_item_type": (f'super_peers = ["{SP}", 7]\n', "super_peers[1]", "expected a string, got an integer 7"),
    "sp_bad_url": (f'super_peers = ["{SP}", "tcp://sp:1?publicKey={SP_PK2}"]\n', "super_peers[1]", "must start with 'udp://'"),
    "sp_bad_pk": ('super_peers = ["udp://sp:1?publicKey=abc"]\n', "super_peers[0]", "64 hex characters"),
    "sp_mixed_id": (f'super_peers = ["{SP}", "udp://b:1?publicKey={SP_PK2}&networkId=2"]\n', "super_peers[1]",
                    "networkId=2 differs from super_peers[0]'s 1"),
    "sp_same_pk": (f'super_peers = ["{SP}", "udp://other:1?publicKey={SP_PK}"]\n', "super_peers[1]",
                   "same public key as super_peers[0]"),
    "network_type": ("network = 3\n", "network", "expected an array, got an integer"),
    "network_item_type": ('network = ["https://a/"]\n', "network[0]", "expected a table, got a string"),
    "network_no_url": ("[[network]]\ndisabled = true\n", "network[0].config_url", "missing"),
    "network_url_type": ("[[network]]\nconfig_url = 1\n", "network[0].config_url", "expected a string"),
    "network_bad_scheme": ('[[network]]\nconfig_url = "ftp://a/x"\n', "network[0].config_url", "unsupported URL scheme 'ftp'"),
    "network_relative": ('[[network]]\nconfig_url = "net.toml"\n', "network[0].config_url", "not an absolute URL"),
    "network_bad_port": ('[[network]]\nconfig_url = "https://a:70000/"\n', "network[0].config_url", "invalid port"),
    "network_duplicate": ('[[network]]\nconfig_url = "https://u:pw@a.example/x/../n.toml"\n'
                          '[[network]]\nconfig_url = "HTTPS://u:pw@A.example:443/n.toml"\n',
                          "network[1].config_url", "duplicate of network[0] (both are 'https://u:***@a.example/n.toml')"),
    "network_disabled_type": ('[[network]]\nconfig_url = "https://a/"\ndisabled = "no"\n', "network[0].disabled",
                              "expected a boolean, got a string 'no'"),
    "network_name_type": ('[[network]]\nconfig_url = "https://a/"\nname = 1\n', "network[0].name", "expected a string"),
    "nat_type": ("nat = 1\n", "nat", "expected a table, got an integer"),
    "nat_port_mapping_type": ("[nat]\nport_mapping = 1\n", "nat.port_mapping", "expected an array, got an integer"),
    "nat_port_mapping_unknown": ('[nat]\nport_mapping = ["igd"]\n', "nat.port_mapping",
                                 "distinct protocols out of pcp, natpmp, upnp; got ['igd']"),
    "nat_port_mapping_empty": ("[nat]\nport_mapping = []\n", "nat.port_mapping", "expected true, false or a list"),
    "nat_probing_type": ('[nat]\nprobing = "yes"\n', "nat.probing", "expected a boolean, got a string 'yes'"),
}


@pytest.mark.parametrize("text, protocols, probing", [
    ("", ("pcp", "natpmp", "upnp"), True),
    ("[nat]\nport_mapping = false\nprobing = false\n", (), False),
    ('[nat]\nport_mapping = ["upnp", "pcp"]\n', ("upnp", "pcp"), True),
])
def test_nat_settings(tmp_path, ident, text, protocols, probing):
    config = load(write(tmp_path, text + identity_table(ident)))
    assert (config.nat.port_mapping, config.nat.probing) == (protocols, probing)


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_each_config_error_names_file_and_key(tmp_path, ident, case):
    body, key, words = ERRORS[case]
    top, _, tables = body.partition("[[")  # top-level keys must come before [identity]
    path = write(tmp_path, top + identity_table(ident) + (("[[" + tables) if tables else ""))
    with pytest.raises(AgentConfigError) as err:
        load(path)
    message = str(err.value)
    assert message.startswith(f"{path}: {key}: " if key != "TOML syntax error" else f"{path}: {key}: ")
    assert words in message
    assert "\n" not in message and "secret" not in message and ":pw@" not in message


IDENTITY_ERRORS = {
    "identity_missing": (lambda i: "mtu = 1345\n", "identity", "missing"),
    "identity_type": (lambda i: "identity = 1\n", "identity", "expected a table, got an integer"),
    "sk_missing": (lambda i: f"[identity]\npow = {i.proof_of_work}\n", "identity.sk", "missing"),
    "pow_missing": (lambda i: f'[identity]\nsk = "{i.secret_key.hex()}"\n', "identity.pow", "missing"),
    "sk_type": (lambda i: identity_table(i).replace(f'"{i.secret_key.hex()}"', "1"), "identity.sk", "expected a string"),
    "sk_short": (lambda i: identity_table(i, sk=i.secret_key.hex()[:-2]), "identity.sk", "got 126 characters"),
    "sk_not_hex": (lambda i: identity_table(i, sk="zz" + i.secret_key.hex()[2:]), "identity.sk", "non-hex"),
    "sk_wrong_public_half": (lambda i: identity_table(i, sk=i.secret_key.hex()[:64] + SP_PK), "identity.sk",
                             "are not the public key of the first 32"),
    "pow_type": (lambda i: identity_table(i, pow_value='"1"'), "identity.pow", "expected an integer, got a string"),
    "pow_range": (lambda i: identity_table(i, pow_value=2**31), "identity.pow", "2147483648 is not a signed 32-bit integer"),
}


@pytest.mark.parametrize("case", sorted(IDENTITY_ERRORS))
def test_each_identity_error_names_file_and_key(tmp_path, ident, case):
    make, key, words = IDENTITY_ERRORS[case]
    path = write(tmp_path, make(ident))
    with pytest.raises(AgentConfigError) as err:
        load(path)
    assert str(err.value).startswith(f"{path}: {key}: ")
    assert words in str(err.value)
    assert ident.secret_key.hex() not in str(err.value)


def test_pow_below_the_required_difficulty_is_an_error(tmp_path, ident):
    reached = pow_difficulty(ident.public_key, ident.proof_of_work)
    path = write(tmp_path, identity_table(ident))
    assert load(path, difficulty=reached).identity == ident
    with pytest.raises(AgentConfigError, match=rf"identity.pow: reaches {reached} of the required {reached + 1} bits"):
        load(path, difficulty=reached + 1)


def test_mtu_limit_follows_arming(tmp_path, ident):
    path = write(tmp_path, "mtu = 1393\n" + identity_table(ident))
    assert load(path, arm_messages=False).mtu == 1393
    with pytest.raises(AgentConfigError, match="1393 is outside 576..1345"):
        load(path)


def test_unreadable_and_non_utf8_files(tmp_path, ident):
    with pytest.raises(AgentConfigError, match=rf"^{tmp_path}/nope.toml: cannot read: No such file"):
        AgentConfig.load(tmp_path / "nope.toml")
    path = tmp_path / "config.toml"
    path.write_bytes(b"mtu = 1345 # \xff\n")
    with pytest.raises(AgentConfigError, match="not UTF-8 text"):
        load(path)


# --- URLs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("given, normal", [
    ("HTTPS://Example.COM:443/net.toml", "https://example.com/net.toml"),
    ("http://example.com", "http://example.com/"),
    ("http://example.com:80/a/./b/../c", "http://example.com/a/c"),
    ("http://example.com:8080/%2e%2E/x", "http://example.com:8080/x"),
    ("https://user:@h.example/x", "https://user@h.example/x"),
    ("https://@h.example/x", "https://h.example/x"),
    ("https://h.example/a b/ü?x y#z w", "https://h.example/a%20b/%C3%BC?x%20y#z%20w"),
    ("https://[2001:DB8:0::1]:443/x", "https://[2001:db8::1]/x"),
    ("  https://h.example/x\n", "https://h.example/x"),
    ("file://localhost/etc/x.toml", "file:///etc/x.toml"),
    ("file:/etc/x.toml", "file:///etc/x.toml"),
    ("file://rel/x.toml", "file://rel/x.toml"),
])
def test_urls_are_normalised_like_the_url_crate(given, normal):
    assert normalize_url(given) == normal


WHATWG_CASES = [
    "HTTPS://u:@Ex.COM:443/a/%2e/b/..%2E/ c?x y#z w", "https://h.example:0443/x", "https://u%41:p w@h.example/",
    "https://u:p:q@h.example/", "https://a@b@h.example/", "http:\\\\h.example\\a\\b", "https://h.example/a/b/.",
    "https://h.example?q", "https://h.example#f", "https://h.example/{x}`^|", "https://h.example/?a='b'\"<>",
    "https://h.example/#a'b\"<>`", "https://H.EXAMPLE./x", "https://h.example:/x", "file:///etc/../x",
    "https://münchen.example/x", "https://h.example/%7e%7E", "http://h.example/a%2fb", "https:h.example/x",
    "https:///h.example/x", "https://h.example/\t/x", "file://host.example/share/x.toml", "FILE:///X.toml",
    "https://[::ffff:192.0.2.1]/", "https://h.example/a/.%2e/b", "http://%41.example/",
    # errors in both
    "https://h.example:99999/", "http://a b/", "https://[::1/", "https://", "https://h.example:8a/", "https://a<b.example/",
]


@pytest.mark.skipif(shutil.which("node") is None, reason="node (a WHATWG URL implementation) is not installed")
def test_urls_match_an_independent_whatwg_implementation():
    """Node's URL class implements the standard the Rust url crate implements."""
    script = "for (const x of JSON.parse(process.argv[1])) { let h = null; try { h = new URL(x).href } catch {} " \
             "console.log(JSON.stringify(h)) }"
    out = subprocess.run(["node", "-e", script, json.dumps(WHATWG_CASES)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    for given, line in zip(WHATWG_CASES, out.stdout.splitlines(), strict=True):
        want = json.loads(line)
        if want is None:
            with pytest.raises(ConfigError):
                normalize_url(given)
        else:
            assert normalize_url(given) == want, given


@pytest.mark.parametrize("url, shown", [
    ("https://alice:secret@h.example/n.toml", "https://alice:***@h.example/n.toml"),
    ("https://:secret@h.example/", "https://:***@h.example/"),
    ("https://alice@h.example/n.toml", "https://alice@h.example/n.toml"),
    ("https://alice@h.example:8443/n.toml", "https://alice@h.example:8443/n.toml"),
    ("https://h.example:8443/a@b", "https://h.example:***@b"),  # over-masked: an @ in the path
    ("https://h.example/a@b", "https://h.example/a@b"),
    ("file:///etc/drasyl/n.toml", "file:///etc/drasyl/n.toml"),
    ("not a url", "not a url"),
    # passwords with characters that end the authority for a standard parser, or are @ or :
    ("https://user:pa#ss@host/x", "https://user:***@host/x"),
    ("https://user:p/w@host/x", "https://user:***@host/x"),
    ("https://u:p?q@h/", "https://u:***@h/"),
    ("https://u:a@b@h/", "https://u:***@h/"),
    ("https://u:a:b@h/", "https://u:***@h/"),
    ("https://alice:p@ss/word@h.example/n", "https://alice:***@h.example/n"),
    ("https://alice:p@ss#w@h.example/n", "https://alice:***@h.example/n"),
    ("https://user:secret@h/x?a=b@c", "https://user:***@c"),  # ambiguous: masked up to the last @
])
def test_url_masking_never_shows_the_password(url, shown):
    assert mask_url(url) == shown


# --- first run --------------------------------------------------------------------------------


def test_first_run_generates_identity_with_mode_0600(tmp_path):
    path = tmp_path / "config.toml"
    announced, progress = [], []
    cfg = AgentConfig.load_or_create(path, difficulty=LOW, progress=lambda t, e: progress.append(t),
                                     on_generate=announced.append)
    assert announced == [str(path)]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert pow_difficulty(cfg.identity.public_key, cfg.identity.proof_of_work) >= LOW
    data = tomllib.loads(path.read_text())
    assert data == {"identity": {"sk": cfg.identity.secret_key.hex(), "pow": cfg.identity.proof_of_work}}
    again = AgentConfig.load_or_create(path, difficulty=LOW, on_generate=announced.append)
    assert again.identity == cfg.identity and announced == [str(path)]
    assert [p.name for p in tmp_path.iterdir()] == ["config.toml"]


def test_first_run_needs_the_directory(tmp_path):
    with pytest.raises(AgentConfigError, match=rf"directory '{tmp_path}/missing' does not exist"):
        AgentConfig.load_or_create(tmp_path / "missing" / "config.toml", difficulty=LOW)


@pytest.mark.parametrize("broken", [b"mtu = = 1\n", b'super_peers = []\n', b"\xff"])
def test_a_broken_file_is_never_overwritten(tmp_path, broken):
    path = tmp_path / "config.toml"
    path.write_bytes(broken)
    with pytest.raises(AgentConfigError):
        AgentConfig.load_or_create(path, difficulty=LOW)
    assert path.read_bytes() == broken


def test_provisioned_file_without_identity_gets_one_and_keeps_the_rest(tmp_path):
    text = f'# provisioned by ops\nsuper_peers = ["{SP}"]  # ours\n\n[[network]]\nconfig_url = "https://a.example/n.toml"\n'
    path = write(tmp_path, text)
    os.chmod(path, 0o640)
    cfg = AgentConfig.load_or_create(path, difficulty=LOW)
    new = path.read_text()
    assert new.startswith(text)
    assert cfg.identity.secret_key.hex() in new
    assert [n.config_url for n in cfg.networks] == ["https://a.example/n.toml"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # the group may read the provisioned file, not the key
    assert any("now mode 0600" in w for w in cfg.warnings), cfg.warnings


def test_consent_keys_parse_and_are_checked(tmp_path, ident):
    head = identity_table(ident) + '[[network]]\nconfig_url = "https://a.example/n.toml"\n'
    path = write(tmp_path, head + 'accept_routes = true\nexit_node = "Gateway-1"\n'
                                  'serve_routes = ["192.168.50.0/24", "10.9.0.0/16"]\n')
    config = load(path)
    (entry,) = config.networks
    assert entry.consent.accept_routes is True
    assert entry.consent.exit_node == "gateway-1"
    assert [str(n) for n in entry.consent.serve_routes] == ["192.168.50.0/24", "10.9.0.0/16"]
    assert config.warnings == ()
    for bad, message in (('serve_routes = ["192.168.50.1/24"]', r"serve_routes\[0\]: not an IPv4 or IPv6 prefix"),
                         ('exit_node = "a b"', "exit_node: 'a b' is neither"),
                         ('accept_routes = "yes"', "accept_routes: expected a boolean")):
        path.write_text(head + bad + "\n")
        with pytest.raises(AgentConfigError, match=message):
            load(path)


# --- editing ----------------------------------------------------------------------------------


def test_every_edit_keeps_comments_and_unknown_keys(tmp_path, ident):
    path = rich(tmp_path, ident)
    original = path.read_text()
    cfg = load(path)
    cfg = cfg.add_network("https://new.example/n.toml")
    assert [n.config_url for n in cfg.networks][-1] == "https://new.example/n.toml"
    cfg = cfg.set_name("https://new.example/n.toml", "New")
    cfg = cfg.set_disabled("HTTPS://NEW.example:443/n.toml", True)
    assert cfg.network("https://new.example/n.toml").disabled is True
    cfg = cfg.set_disabled("https://new.example/n.toml", False)
    cfg = cfg.set_name("https://new.example/n.toml", None)
    cfg = cfg.remove_network("https://new.example/./n.toml")
    text = path.read_text()
    assert comments(text) == comments(original)
    assert tomllib.loads(text) == tomllib.loads(original)
    assert cfg == load(path)


def test_removing_a_network_keeps_the_comment_above_the_next(tmp_path, ident):
    path = rich(tmp_path, ident)
    original = path.read_text()
    cfg = load(path).remove_network("https://user:secret@config.example.com/acme.toml")
    text = path.read_text()
    assert [n.config_url for n in cfg.networks] == ["file:///etc/drasyl/lab.toml"]
    assert "# the lab comes next" in text
    assert comments(original) - comments(text) == {"the office", "unknown key inside a network"}
    assert tomllib.loads(text)["extra"] == {"keep": [1, 2]}
    cfg = cfg.remove_network("file:///etc/drasyl/lab.toml")
    assert cfg.networks == () and "network" not in tomllib.loads(path.read_text())


def test_add_to_a_file_without_networks_and_to_the_inline_form(tmp_path, ident):
    path = write(tmp_path, identity_table(ident))
    cfg = load(path).add_network("https://a.example/n.toml")
    assert tomllib.loads(path.read_text())["network"] == [{"config_url": "https://a.example/n.toml", "disabled": False}]
    path.write_text('network = [{config_url = "https://a.example/n.toml"}]\n' + identity_table(ident))
    cfg = load(path).add_network("file:///b.toml")
    assert [n.config_url for n in cfg.networks] == ["https://a.example/n.toml", "file:///b.toml"]


def test_edit_errors_use_drasyl_rs_messages(tmp_path, ident):
    cfg = load(rich(tmp_path, ident))
    with pytest.raises(ConfigError, match=r"^Network already exists: https://user:\*\*\*@CONFIG.example.com/acme.toml$"):
        cfg.add_network("https://user:secret@CONFIG.example.com/acme.toml")
    with pytest.raises(ConfigError, match=r"^Network not found: https://x.example/$"):
        cfg.remove_network("https://x.example/")
    with pytest.raises(ConfigError, match="unsupported URL scheme"):
        cfg.add_network("gopher://x/")
    for edit in (cfg.set_disabled, cfg.set_name):
        with pytest.raises(ConfigError, match="Network not found"):
            edit("https://x.example/", None)


def test_edits_refuse_a_file_broken_meanwhile_and_leave_it(tmp_path, ident):
    path = rich(tmp_path, ident)
    cfg = load(path)
    path.write_text(path.read_text().replace("mtu = 1300", "mtu = 1300 1300"))
    broken = path.read_bytes()
    with pytest.raises(AgentConfigError, match="TOML syntax error"):
        cfg.add_network("https://b.example/")
    assert path.read_bytes() == broken


def test_edits_keep_mode_and_follow_symlinks(tmp_path, ident):
    real = rich(tmp_path, ident)
    os.chmod(real, 0o600)
    link = tmp_path / "link.toml"
    link.symlink_to(real.name)
    cfg = AgentConfig.load(link, difficulty=LOW).add_network("https://b.example/")
    assert link.is_symlink()
    assert stat.S_IMODE(real.stat().st_mode) == 0o600
    assert cfg.network("https://b.example") is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml", "link.toml"]


def test_reload_reports_what_changed(tmp_path, ident):
    path = rich(tmp_path, ident)
    cfg = load(path)
    same, changes = cfg.reload()
    assert same == cfg and not changes
    text = path.read_text().replace(f'"{SP}"', f'"{SP}", "udp://b.example:22527?publicKey={SP_PK2}"')
    text = text.replace("mtu = 1300", "mtu = 1280").replace("disabled = true", "disabled = false")
    text = text.replace("acme.toml", "acme2.toml")
    path.write_text(text)
    new, changes = cfg.reload()
    assert changes.super_peers is True
    assert [n.config_url for n in changes.added] == ["https://user:secret@config.example.com/acme2.toml"]
    assert [n.config_url for n in changes.removed] == ["https://user:secret@config.example.com/acme.toml"]
    assert [(n.config_url, n.disabled) for n in changes.changed] == [("file:///etc/drasyl/lab.toml", False)]
    assert changes.restart_needed == ("mtu",)
    assert new.mtu == 1280


@pytest.mark.parametrize("mode, warned", [(0o600, False), (0o640, True), (0o604, True)])
def test_run_warns_about_a_config_file_others_can_read(tmp_path, ident, monkeypatch, caplog, mode, warned):
    from drasyl.agent.cli import load_config

    path = write(tmp_path, identity_table(ident))
    path.chmod(mode)
    monkeypatch.setenv("DRASYL_MIN_POW_DIFFICULTY", str(LOW))
    with caplog.at_level("WARNING", logger="drasyl"):
        config = load_config(str(path))
    assert config.identity.public_key == ident.public_key
    expected = (f"config file '{path}' is accessible by group or others (mode {mode:04o}); "
                f"it holds the secret key: chmod 600 '{path}'")
    assert (expected in caplog.messages) is warned, caplog.messages
    assert stat.S_IMODE(path.stat().st_mode) == mode  # reported, never changed behind the user's back


@pytest.mark.parametrize("url", ["https://u:p?q@h/", "https://u:se#cret@h/x", "https://u:pa/ss:99x@h/",
                                 "https://user:p[ss@h/"])
def test_url_errors_never_show_a_password_that_splits_the_url(url):
    secret = url.split("://", 1)[1].split(":", 1)[1].rsplit("@", 1)[0]
    try:
        normalize_url(url)
    except ConfigError as exc:
        message = str(exc)
    else:
        return  # accepted: nothing printed
    for piece in (secret, secret[:2], secret[-2:]):
        assert piece not in message.replace("***", ""), message


# --- misspelt keys, finding networks, comments of the example --------------------------------


@pytest.mark.parametrize("text, key, meant", [
    ('super_peer = ["{sp}"]\n', "super_peer", "super_peers"),
    ('superpeers = ["{sp}"]\n', "superpeers", "super_peers"),
    ('[[networks]]\nconfig_url = "file:///n.toml"\n', "networks", "network"),
    ('mtus = 1300\n', "mtus", "mtu"),
    ('[[network]]\nconfig-url = "file:///n.toml"\n', "network[0].config-url", "config_url"),
    ('[[network]]\nconfig_url = "file:///n.toml"\ndisable = true\n', "network[0].disable", "disabled"),
    ('[[network]]\nconfig_url = "file:///n.toml"\naccept_route = true\n', "network[0].accept_route", "accept_routes"),
    ('[[network]]\nconfig_url = "file:///n.toml"\nserve_route = []\n', "network[0].serve_route", "serve_routes"),
])
def test_a_misspelt_key_is_an_error_with_the_suggestion(tmp_path, ident, text, key, meant):
    path = write(tmp_path, text.format(sp=SP) + identity_table(ident))
    with pytest.raises(AgentConfigError) as error:
        load(path)
    assert str(error.value) == f"{path}: {key}: unknown key; did you mean {meant!r}?"


def test_a_misspelt_identity_is_an_error_too(tmp_path, ident):
    path = write(tmp_path, identity_table(ident).replace("[identity]", "[identiy]"))
    with pytest.raises(AgentConfigError, match=r"identiy: unknown key; did you mean 'identity'\?"):
        AgentConfig.load_or_create(path, LOW)


def test_networks_are_found_by_url_masked_url_or_name(tmp_path, ident):
    cfg = load(rich(tmp_path, ident)).add_network("file:///other.toml")
    cfg = cfg.set_name("file:///other.toml", "Acme")
    acme, lab, other = cfg.networks
    assert cfg.find_network("HTTPS://user:secret@config.example.com:443/acme.toml") == acme
    assert cfg.find_network("https://user:***@config.example.com/acme.toml") == acme
    assert cfg.find_network(" file:///etc/drasyl/lab.toml ") == lab
    with pytest.raises(ConfigError) as error:
        cfg.find_network("Acme")
    assert str(error.value) == ("'Acme' matches 2 networks (https://user:***@config.example.com/acme.toml, "
                                "file:///other.toml); give the full URL")
    cfg = cfg.set_name("file:///other.toml", "Other")
    assert cfg.find_network("Other") == cfg.networks[2]
    with pytest.raises(ConfigError, match=r"^Network not found: https://user:\*\*\*@x.example/$"):
        cfg.find_network("https://user:pw@x.example/")
    cfg = cfg.set_disabled("Other", True).remove_network("https://user:***@config.example.com/acme.toml")
    assert [(n.config_url, n.disabled) for n in cfg.networks] == [("file:///etc/drasyl/lab.toml", True),
                                                                  ("file:///other.toml", True)]


def test_check_new_refuses_before_anything_is_fetched(tmp_path, ident):
    cfg = load(rich(tmp_path, ident))
    with pytest.raises(ConfigError, match="^Network already exists: https://user:\\*\\*\\*@CONFIG.example.com/acme.toml$"):
        cfg.check_new("https://user:secret@CONFIG.example.com/acme.toml")
    with pytest.raises(ConfigError, match="unsupported URL scheme 'ftp'"):
        cfg.check_new("ftp://x/")
    cfg.check_new("https://new.example/n.toml")


def _own_comments(lines: list[str]) -> set[int]:
    """Indices of comment lines inside a [[network]] table, above one of its keys."""
    owned, table, pending = set(), None, []
    for i, line in enumerate(lines):
        if line.startswith("["):
            table, pending = line, []
        elif line.startswith("#"):
            pending.append(i)
        elif "=" in line and table == "[[network]]":
            owned.update(pending)
            pending = []
    return owned


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_removing_the_example_networks_keeps_every_other_comment(tmp_path, order):
    path = tmp_path / "config.toml"
    shutil.copy(REPO / "config.example.toml", path)
    cfg = AgentConfig.load_or_create(path, LOW)
    lines = (REPO / "config.example.toml").read_text().splitlines()
    kept = [line for i, line in enumerate(lines) if line.startswith("#") and i not in _own_comments(lines)]
    assert "# [identity]" in kept and any(line.startswith("# The node identity:") for line in kept)
    assert any("[prometheus]" in line for line in kept)
    urls = [n.config_url for n in cfg.networks]
    for index in order:
        cfg = cfg.remove_network(urls[index])
    text = path.read_text()
    assert cfg.networks == () and "network" not in tomllib.loads(text)
    survivors = [line for line in text.splitlines() if line.startswith("#")]
    assert [line for line in kept if line not in survivors] == []
