"""``drasyl-agent`` in a subprocess against a real REST API server (Unix socket and 127.0.0.1)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from agent_api_server import ConfigControl, ServerThread, make_config, token_file
from drasyl.agent.api import config_status
from drasyl.agent.cli import format_status
from netns import python_env

TOKEN = "cli-test-token"
NOBODY = 65534


def cli(*args: str, home: Path, **env: str) -> subprocess.CompletedProcess:
    """Run the CLI with HOME in the test's directory (so ~/.drasyl is the test's)."""
    return subprocess.run([sys.executable, "-m", "drasyl.agent.cli", *args], capture_output=True, text=True,
                          timeout=60, env=python_env(**{"HOME": str(home), "DRASYL_API_LISTEN": "127.0.0.1:1",
                                                        "DRASYL_RUN_DIR": str(home / "no-run"), **env}))


@pytest.fixture
def agent(tmp_path):
    with ServerThread(ConfigControl(make_config(tmp_path)), token_file(tmp_path, TOKEN)) as running:
        yield running


def client(agent: ServerThread, tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """The CLI with this test's token and server (socket and TCP); options in ``args`` override them."""
    return cli("--token", str(tmp_path / "auth.token"), "--run-dir", str(agent.run_dir),
               "--api", f"127.0.0.1:{agent.port}", *args, home=tmp_path / "home", **env)


def one_error_line(result: subprocess.CompletedProcess, command: str) -> str:
    assert result.returncode == 1, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"drasyl-agent {command}: "), result.stderr
    return lines[0]


def test_status_table(agent, tmp_path):
    result = client(agent, tmp_path, "status")
    assert result.returncode == 0, result.stderr
    config = agent.control.config
    out = result.stdout
    assert f"public key {config.identity.public_key_hex}  MTU 1345" in out
    assert "5b4578909bf0…  sp.example.org:22527  no answer  -          -" in out
    assert "    not contacted yet" in out
    assert "https://user:***@config.example.com/acme.toml  Acme  pending" in out
    assert "Peers: none" in out
    assert config.identity.secret_key.hex()[:64] not in out and "secret" not in out


def test_status_json(agent, tmp_path):
    result = client(agent, tmp_path, "status", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {**config_status(agent.control.config), "api": agent.api.listening()}


def test_status_table_shows_runtime_rows():
    status = {
        "version": "0.1.0", "public_key": "ab" * 32, "mtu": 1345,
        "super_peers": [{"public_key": "5b" * 32, "address": "sp:22527", "transport": "tcp", "rtt_ms": 12.34,
                         "state": "tcp fallback", "reason": "registered over TCP: UDP unanswered for 12 s",
                         "default": True}],
        "networks": [{"config_url": "file:///n.toml", "name": None, "state": "error", "subnet": "10.1.0.0/24",
                      "ip": "10.1.0.1", "error": "duplicate IP address: 10.1.0.2",
                      "warnings": ["[[policy]] #1: group 'ops' has no members"]}],
        "routes": [{"dest": "192.168.50.0/24", "gateway": "10.1.0.10", "network": "Acme", "state": "Pending"}],
        "peers": [{"public_key": "fe" * 32, "hostname": "fileserver", "ip": "10.1.0.2", "path": "direct",
                   "endpoint": "203.0.113.10:22527", "rtt_ms": 0.5, "last_rx_s": 75.2, "rx_bytes": 1_234_567,
                   "tx_bytes": 999},
                  {"public_key": "fd" * 32, "hostname": "printer", "ip": "10.1.0.3", "path": "relayed",
                   "via": "5b" * 32, "last_punch_s": 30.0, "punch_result": "no direct path (…)",
                   "rx_bytes": 0, "tx_bytes": 0},
                  {"public_key": "fc" * 32, "hostname": "vault", "ip": "10.1.0.4", "path": "unreachable",
                   "reason": "no [[policy]] of the network lets this node and the peer talk",
                   "rx_bytes": 0, "tx_bytes": 0}],
        "drops": {"policy": 3, "no_route": 0},
        "api": {"socket": "/run/drasyl/api.sock", "tcp": None, "socket_error": None,
                "tcp_error": "REST API cannot listen on 127.0.0.1:22527: Address already in use (held by uid 65534)"},
    }
    assert format_status(status).splitlines()[2:] == [
        "Super peers:",
        "     PUBLIC KEY     ADDRESS   STATE         TRANSPORT  RTT",
        "  *  5b5b5b5b5b5b…  sp:22527  tcp fallback  tcp        12.3 ms",
        "    registered over TCP: UDP unanswered for 12 s",
        "",
        "Networks:",
        "  URL             NAME  STATE  SUBNET       IP",
        "  file:///n.toml  -     error  10.1.0.0/24  10.1.0.1",
        "    error: duplicate IP address: 10.1.0.2",
        "    warning: [[policy]] #1: group 'ops' has no members",
        "",
        "Routes:",
        "  DESTINATION      GATEWAY    NETWORK  STATE",
        "  192.168.50.0/24  10.1.0.10  Acme     Pending",
        "",
        "Peers:",
        "  HOSTNAME    IP        PUBLIC KEY     PATH                       RTT     LAST RX  IN      OUT",
        "  fileserver  10.1.0.2  fefefefefefe…  direct 203.0.113.10:22527  0.5 ms  1m 15s   1.2 MB  999 B",
        "  printer     10.1.0.3  fdfdfdfdfdfd…  relayed via 5b5b5b5b5b5b…  -       never    0 B     0 B",
        "    last hole punch 30s ago: no direct path (…)",
        "  vault       10.1.0.4  fcfcfcfcfcfc…  unreachable                -       never    0 B     0 B",
        "    no [[policy]] of the network lets this node and the peer talk",
        "",
        "Dropped packets: policy 3",
        "",
        "API problem: REST API cannot listen on 127.0.0.1:22527: Address already in use (held by uid 65534)",
    ]


def test_network_commands(agent, tmp_path):
    url = "https://b.example/net.toml"
    for verb, past in (("add", "added"), ("disable", "disabled"), ("enable", "enabled"), ("remove", "removed")):
        result = client(agent, tmp_path, verb, url)
        assert (result.returncode, result.stdout, result.stderr) == (0, f"Network '{url}' {past} successfully\n", "")
        if verb == "disable":
            assert tomllib.loads((tmp_path / "config.toml").read_text())["network"][1]["disabled"] is True
    result = client(agent, tmp_path, "remove", url)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == f"Failed to remove network '{url}': Network not found: {url}\n"


def test_options_before_the_subcommand_and_api_from_the_environment(agent, tmp_path):
    result = cli("--token", str(tmp_path / "auth.token"), "add", "file:///x.toml", home=tmp_path / "home",
                 DRASYL_API_LISTEN=f"127.0.0.1:{agent.port}")  # no socket in $DRASYL_RUN_DIR: TCP
    assert (result.returncode, result.stdout) == (0, "Network 'file:///x.toml' added successfully\n"), result.stderr
    result = cli("--token", str(tmp_path / "auth.token"), "remove", "file:///x.toml", home=tmp_path / "home",
                 DRASYL_RUN_DIR=str(agent.run_dir))  # nothing on TCP 127.0.0.1:1: the socket
    assert (result.returncode, result.stdout) == (0, "Network 'file:///x.toml' removed successfully\n"), result.stderr


def test_the_socket_is_used_when_present_and_tcp_otherwise(agent, tmp_path):
    assert client(agent, tmp_path, "status", "--api", "127.0.0.1:1").returncode == 0
    result = client(agent, tmp_path, "status", "--run-dir", str(tmp_path / "empty"))
    assert result.returncode == 0, result.stderr  # TCP, held by root


@pytest.mark.parametrize("spoil, problem", [
    (lambda d: d.chmod(0o777), "{d} is writable by group or others (mode 0777)"),
    (lambda d: os.chown(d, NOBODY, -1), f"{{d}} is owned by uid {NOBODY}, not by root"),
    (lambda d: os.chown(d / "api.sock", NOBODY, -1), f"{{d}}/api.sock is owned by uid {NOBODY}, not by root"),
])
def test_a_socket_others_could_have_put_there_gets_no_token(agent, tmp_path, spoil, problem):
    spoil(agent.run_dir)
    before = (tmp_path / "config.toml").read_bytes()
    result = client(agent, tmp_path, "add", "file:///x.toml")
    assert one_error_line(result, "add") == (f"drasyl-agent add: not sending the API token to {agent.run_dir}/api.sock: "
                                             + problem.format(d=agent.run_dir))
    assert (tmp_path / "config.toml").read_bytes() == before


def test_wrong_token(agent, tmp_path):
    (tmp_path / "other.token").write_text("nope")
    result = client(agent, tmp_path, "status", "--token", str(tmp_path / "other.token"))
    assert one_error_line(result, "status") == (
        f"drasyl-agent status: the agent's API at {agent.run_dir}/api.sock answered 401: token wrong")
    result = client(agent, tmp_path, "status", "--token", str(tmp_path / "other.token"), "--run-dir", str(tmp_path))
    assert one_error_line(result, "status") == (
        f"drasyl-agent status: the agent's API at 127.0.0.1:{agent.port} answered 401: token wrong")


def test_missing_token_file_then_the_home_fallback(agent, tmp_path):
    missing = str(tmp_path / "missing.token")
    result = client(agent, tmp_path, "add", "file:///x.toml", "--token", missing)
    line = one_error_line(result, "add")
    assert line == (f"drasyl-agent add: cannot read the API token: '{missing}': No such file or directory; "
                    f"'{tmp_path}/home/.drasyl/auth.token': No such file or directory")
    (tmp_path / "home" / ".drasyl").mkdir(parents=True)
    (tmp_path / "home" / ".drasyl" / "auth.token").write_text(TOKEN + "\n")
    result = client(agent, tmp_path, "status", "--json", "--token", missing)
    assert result.returncode == 0, result.stderr


def test_agent_not_running_also_before_its_first_start(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again below: nobody listens there
    hint = "start it with 'drasyl-agent run' or 'systemctl start drasyl-agent')"
    for token in (tmp_path / "no.token", token_file(tmp_path).path):  # no token file yet: the same answer
        result = cli("status", "--token", str(token), "--api", f"127.0.0.1:{port}", "--run-dir", str(tmp_path / "run"),
                     home=tmp_path)
        assert one_error_line(result, "status") == (
            f"drasyl-agent status: is the agent running? (no API socket at {tmp_path}/run/api.sock, "
            f"nothing listening on 127.0.0.1:{port}; {hint}")
    (tmp_path / "run").mkdir()
    with socket.socket(socket.AF_UNIX) as stale:  # a killed agent's socket
        stale.bind(str(tmp_path / "run" / "api.sock"))
    result = cli("status", "--token", str(token), "--run-dir", str(tmp_path / "run"), home=tmp_path,
                 DRASYL_API_LISTEN="")
    assert one_error_line(result, "status") == (
        f"drasyl-agent status: is the agent running? ({tmp_path}/run/api.sock: Connection refused, "
        f"no TCP API (DRASYL_API_LISTEN is empty); {hint}")


def test_bad_api_address(tmp_path):
    result = cli("status", "--api", "nonsense", home=tmp_path)
    assert one_error_line(result, "status") == (
        "drasyl-agent status: API address 'nonsense' is invalid: expected host:port or [ipv6]:port")


def test_help_names_the_files_and_variables(tmp_path):
    result = cli("--help", home=tmp_path)
    assert result.returncode == 0
    for words in ("/etc/drasyl/config.toml", "/etc/drasyl/auth.token", "~/.drasyl/auth.token",
                  "DRASYL_API_LISTEN", "127.0.0.1:22527", "DRASYL_LOG_LEVEL", "run", "status", "disable",
                  "/run/drasyl/api.sock", "DRASYL_RUN_DIR", "--run-dir DIR", "/proc/net/tcp"):
        assert words in result.stdout, words
    result = cli("status", "--help", home=tmp_path)
    assert result.returncode == 0 and "--json" in result.stdout and "--token FILE" in result.stdout


@pytest.mark.parametrize("command, present, absent", [
    ("run", ["--config", "--token", "--api", "--run-dir", "--log-level", "--log-file"], ["--json", "--force"]),
    ("status", ["--token", "--api", "--run-dir", "--json"], ["--config", "--log-level", "--log-file"]),
    ("add", ["--token", "--force", "URL"], ["--config", "--log-level", "--log-file", "--json"]),
    ("remove", ["--token", "NETWORK", "masked URL", "name"], ["--config", "--log-level", "--force"]),
    ("version", [], ["--config", "--token", "--log-level"]),
])
def test_each_subcommand_lists_only_its_own_options(tmp_path, command, present, absent):
    result = cli(command, "--help", home=tmp_path)
    assert result.returncode == 0, result.stderr
    for word in present:
        assert word in result.stdout, word
    for word in absent:
        assert word not in result.stdout, word


def test_remove_and_disable_take_the_masked_url_or_the_name(agent, tmp_path):
    result = client(agent, tmp_path, "disable", "Acme")
    assert (result.returncode, result.stdout) == (0, "Network 'Acme' disabled successfully\n"), result.stderr
    assert agent.control.config.networks[0].disabled is True
    result = client(agent, tmp_path, "remove", "https://user:***@config.example.com/acme.toml")
    assert result.returncode == 0, result.stderr
    assert agent.control.config.networks == ()


def test_add_force_is_sent_to_the_agent(agent, tmp_path):
    result = client(agent, tmp_path, "add", "--force", "file:///x.toml")
    assert (result.returncode, result.stdout) == (0, "Network 'file:///x.toml' added (forced)\n"), result.stderr


@pytest.mark.parametrize("args", [(), ("add",), ("status", "--bogus"), ("frobnicate",)])
def test_usage_errors_exit_2(tmp_path, args):
    result = cli(*args, home=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("usage: drasyl-agent"), result.stderr
    assert "Traceback" not in result.stderr


def test_version(tmp_path):
    result = cli("version", home=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Version : 0.1.0")
    assert lines[1].startswith(f"Python  : {sys.version.split()[0]}")
    for flag in ("--version", "-V"):
        assert (cli(flag, home=tmp_path).returncode, cli(flag, home=tmp_path).stdout) == (0, result.stdout)


def test_log_levels_keep_the_libraries_quiet_unless_trace(monkeypatch):
    from drasyl.agent.cli import configure_log_levels
    from drasyl.env import TRACE

    root, own = logging.getLogger(), logging.getLogger("drasyl")
    monkeypatch.setattr(root, "level", root.level)
    monkeypatch.setattr(own, "level", own.level)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    monkeypatch.setattr(root, "handlers", [handler])
    for level, own_level, library_level in ((logging.DEBUG, logging.DEBUG, logging.WARNING),
                                            (logging.INFO, logging.INFO, logging.WARNING),
                                            (logging.ERROR, logging.ERROR, logging.ERROR),
                                            (TRACE, logging.DEBUG, TRACE)):
        configure_log_levels(level)
        assert (own.level, root.level) == (own_level, library_level)
    configure_log_levels(logging.DEBUG)
    logging.getLogger("pyroute2.ndb").debug("library detail")
    logging.getLogger("drasyl.agent").debug("own detail")
    configure_log_levels(TRACE)
    logging.getLogger("aiohttp.client").debug("library detail at trace")
    assert [r.getMessage() for r in records] == ["own detail", "library detail at trace"]


def test_run_log_level_trace_is_accepted_and_below_debug():
    from drasyl.env import TRACE, log_level

    assert log_level({"--log-level": "trace"}, own="--log-level") == TRACE < logging.DEBUG
    assert log_level({"--log-level": "debug"}, own="--log-level") == logging.DEBUG


def test_bash_completion_completes_subcommands_and_their_options(tmp_path):
    script = cli("completion", "bash", home=tmp_path)
    assert script.returncode == 0, script.stderr
    (tmp_path / "completion.bash").write_text(script.stdout)

    def complete(*words: str) -> list[str]:
        driver = (f'source {tmp_path}/completion.bash; COMP_WORDS=({" ".join(map(repr, words))}); '
                  f'COMP_CWORD={len(words) - 1}; _drasyl_agent; printf "%s\\n" "${{COMPREPLY[@]}}"')
        return subprocess.run(["bash", "-c", driver], capture_output=True, text=True, check=True).stdout.split()

    assert complete("drasyl-agent", "st") == ["status"]
    assert complete("drasyl-agent", "--config", "x", "status", "--j") == ["--json"]
    assert complete("drasyl-agent", "run", "--log-level", "tr") == ["trace"]
    assert complete("drasyl-agent", "completion", "") == ["--help", "bash", "zsh"]
    assert "--log-level" not in complete("drasyl-agent", "status", "--")
    assert set(complete("drasyl-agent", "")) >= {"run", "status", "version", "add", "remove", "enable",
                                                 "disable", "completion", "manpage"}


def test_zsh_completion_names_every_subcommand(tmp_path):
    result = cli("completion", "zsh", home=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("#compdef drasyl-agent\n")
    for command in ("run", "status", "version", "add", "remove", "enable", "disable", "completion", "manpage"):
        assert f"'{command}:" in result.stdout and f"            {command}) _arguments" in result.stdout
    assert "'--force[save the entry even when the config cannot be fetched or used now]'" in result.stdout


def test_manpage_renders_with_every_section_and_subcommand(tmp_path):
    result = cli("manpage", home=tmp_path)
    assert result.returncode == 0, result.stderr
    page = result.stdout
    assert page.startswith(".TH DRASYL-AGENT 8 ")
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "OPTIONS", "FILES", "ENVIRONMENT", "SIGNALS",
                    "EXIT STATUS"):
        assert f"\n.SH {section}\n" in page, section
    if shutil.which("groff") is None:
        pytest.skip("no groff to render the page")
    rendered = subprocess.run(["groff", "-man", "-Tutf8", "-ww"], input=page, capture_output=True, text=True,
                              env={**os.environ, "GROFF_NO_SGR": "1"})
    assert rendered.returncode == 0 and rendered.stderr == "", rendered.stderr
    text = re.sub(r".\x08", "", rendered.stdout).replace("\u2010", "-")
    assert "drasyl-agent - join this machine to drasyl overlay networks" in text
    for command in ("run", "status", "version", "add", "remove", "enable", "disable", "completion", "manpage"):
        assert re.search(rf"^ {{7}}{command}\b", text, re.M), command
    assert "DRASYL_API_LISTEN" in text and "/etc/drasyl/config.toml" in text and "SIGHUP" in text


def test_systemd_unit_runs_the_agent_with_the_cli_defaults():
    from drasyl.agent.api import DEFAULT_TOKEN_FILE
    from drasyl.agent.cli import DEFAULT_CONFIG

    unit = dict(line.split("=", 1) for line in
                (Path(__file__).resolve().parents[1] / "contrib" / "drasyl-agent.service").read_text().splitlines()
                if "=" in line and not line.startswith("#"))
    assert unit["ExecStart"].split() == ["/opt/drasyl/bin/drasyl-agent", "run", "--config", DEFAULT_CONFIG,
                                         "--token", DEFAULT_TOKEN_FILE]
    assert unit["WorkingDirectory"] == str(Path(DEFAULT_CONFIG).parent)
    assert unit["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert (unit["Restart"], unit["RestartSec"]) == ("always", "3")
    assert unit["AmbientCapabilities"] == unit["CapabilityBoundingSet"] == "CAP_NET_ADMIN"
    assert unit["After"] == unit["Wants"] == "network-online.target"


def test_run_loads_config_with_a_strict_environment(tmp_path, monkeypatch, capsys, caplog):
    from drasyl.agent.cli import load_config
    from drasyl.agent.config import AgentConfigError
    from drasyl.errors import ConfigError

    path = tmp_path / "config.toml"
    monkeypatch.setenv("DRASYL_MIN_POW_DIFFICULTY", "6")
    caplog.set_level("INFO", logger="drasyl.agent")
    config = load_config(str(path))
    assert capsys.readouterr().out == (f"Config file '{path}' does not exist: generating a new identity "
                                       "(proof of work, this may take a while)...\n")
    assert f"I am {config.identity.public_key_hex}" in caplog.text
    path.write_text("surprise = 1\n" + path.read_text())
    assert load_config(str(path)).identity == config.identity
    assert f"{path}: surprise: unknown key ignored" in caplog.text
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("DRASYL_ARM_MESSAGES", "yes")
    with pytest.raises(ConfigError, match="DRASYL_ARM_MESSAGES='yes' is invalid"):
        load_config(str(path))
    monkeypatch.setenv("DRASYL_ARM_MESSAGES", "false")
    path.write_text("mtu = 1393\n" + path.read_text())
    assert load_config(str(path)).mtu == 1393
    monkeypatch.setenv("DRASYL_MIN_POW_DIFFICULTY", "64")
    with pytest.raises(AgentConfigError, match="identity.pow: reaches .* of the required 64 bits"):
        load_config(str(path))
