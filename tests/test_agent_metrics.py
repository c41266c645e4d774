"""The agent's opt-in Prometheus endpoint: :class:`AgentMetrics` on a real socket over a status
dict, scraped with urllib and read back with prometheus_client's parser; the ``[metrics]``
settings of config.toml and ``DRASYL_AGENT_METRICS_LISTEN``."""

from __future__ import annotations

import asyncio
import copy
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
from agent_api_server import LOW_DIFFICULTY, low_identity
from prometheus_client.parser import text_string_to_metric_families

from drasyl.agent.api import AgentError
from drasyl.agent.config import METRICS_ENV, AgentConfig, AgentConfigError, MetricsSettings
from drasyl.agent.metrics import AgentMetrics
from drasyl.errors import ConfigError

PK, SP1, SP2, PEER1, PEER2 = ("ab" * 32, "cd" * 32, "ef" * 32, "12" * 32, "34" * 32)
NET = "https://user:***@config.example.com/acme.toml"
STATUS: dict[str, Any] = {
    "version": "0.1.0", "public_key": PK, "mtu": 1345,
    "super_peers": [
        {"url": "udp://…", "public_key": SP1, "address": "sp1.example.org:22527", "transport": "tcp",
         "rtt_ms": 12.5, "default": True},
        {"url": "udp://…", "public_key": SP2, "address": "192.0.2.7:22527", "transport": None,
         "rtt_ms": None, "default": False},
    ],
    "networks": [
        {"config_url": NET, "name": "Acme", "disabled": False, "state": "active", "subnet": "10.1.0.0/24",
         "ip": "10.1.0.1", "error": "timed out", "insecure": False, "refused": ["route a", "route b"]},
        {"config_url": "http://lab.example/net.toml", "name": None, "disabled": True, "state": "disabled",
         "subnet": None, "ip": None, "error": None, "insecure": True, "refused": []},
    ],
    "peers": [
        {"public_key": PEER1, "hostname": "fileserver", "ip": "10.1.0.2", "path": "direct", "rtt_ms": 8.25,
         "last_rx_s": 1.5, "rx_bytes": 1000, "tx_bytes": 2000},
        {"public_key": PEER2, "hostname": None, "ip": None, "path": "relayed", "rtt_ms": None,
         "last_rx_s": None, "rx_bytes": 0, "tx_bytes": 0},
    ],
    "conflicts": ["net2: 10.1.0.2 joined earlier"],
    "drops": {"rx_policy_denied": 3, "tx_policy_denied": 7},
}


class FakeAgent:
    """The one method the metrics read; counts the calls (one per scrape, none otherwise)."""

    def __init__(self) -> None:
        self.current = copy.deepcopy(STATUS)
        self.calls = 0

    def status(self) -> dict[str, Any]:
        self.calls += 1
        return copy.deepcopy(self.current)


class Served:
    """``AgentMetrics.start`` in an event loop of its own thread, so urllib can block on it."""

    def __init__(self, agent: FakeAgent, settings: MetricsSettings) -> None:
        self.metrics: AgentMetrics | None = None
        self._loop = asyncio.new_event_loop()
        future = asyncio.run_coroutine_threadsafe(AgentMetrics.start(agent, settings), self._loop)
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.metrics = future.result(10)

    def url(self, path: str = "/metrics") -> str:
        return f"http://127.0.0.1:{self.metrics.port}{path}"

    def close(self) -> None:
        if self.metrics is not None:
            asyncio.run_coroutine_threadsafe(self.metrics.close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture
def agent() -> FakeAgent:
    return FakeAgent()


@pytest.fixture
def served(agent: FakeAgent) -> Iterator[Served]:
    server = Served(agent, MetricsSettings(("127.0.0.1", 0)))
    try:
        yield server
    finally:
        server.close()


def scrape(url: str, token: str | None = None) -> tuple[int, str, str]:
    """(status, Content-Type, body); HTTP errors are answers, not exceptions."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def samples(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """sample name -> sorted labels -> value, through prometheus_client's own parser."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def by(metric: dict[tuple[tuple[str, str], ...], float], **labels: str) -> float:
    return metric[tuple(sorted(labels.items()))]


def test_every_family_shows_the_status(served: Served) -> None:
    code, content_type, body = scrape(served.url())
    assert code == 200 and content_type.startswith("text/plain; version=0.0.4"), (code, content_type)
    m = samples(body)
    assert by(m["drasyl_agent_info"], version="0.1.0", public_key=PK) == 1
    # super peers: reachable over TCP with an RTT, or not reachable at all
    assert by(m["drasyl_agent_super_peer_info"], super_peer=SP2, address="192.0.2.7:22527") == 1
    assert by(m["drasyl_agent_super_peer_up"], super_peer=SP1) == 1
    assert by(m["drasyl_agent_super_peer_up"], super_peer=SP2) == 0
    assert [by(m["drasyl_agent_super_peer_transport"], super_peer=SP1, transport=t) for t in ("udp", "tcp")] == [0, 1]
    assert [by(m["drasyl_agent_super_peer_transport"], super_peer=SP2, transport=t) for t in ("udp", "tcp")] == [0, 0]
    assert by(m["drasyl_agent_super_peer_default"], super_peer=SP1) == 1
    assert by(m["drasyl_agent_super_peer_default"], super_peer=SP2) == 0
    assert m["drasyl_agent_super_peer_rtt_seconds"] == {(("super_peer", SP1),): 0.0125}  # none without an RTT
    # peers: path as a 0/1 gauge per path, RTT and idle time only when known, bytes as counters
    assert by(m["drasyl_agent_peer_info"], peer=PEER1, hostname="fileserver", ip="10.1.0.2") == 1
    assert by(m["drasyl_agent_peer_info"], peer=PEER2, hostname="", ip="") == 1
    for peer, path in ((PEER1, "direct"), (PEER2, "relayed")):
        assert {p: by(m["drasyl_agent_peer_path"], peer=peer, path=p) for p in ("direct", "relayed", "tcp")} == {
            p: float(p == path) for p in ("direct", "relayed", "tcp")}
    assert m["drasyl_agent_peer_rtt_seconds"] == {(("peer", PEER1),): 0.00825}
    assert m["drasyl_agent_peer_last_rx_seconds"] == {(("peer", PEER1),): 1.5}
    assert by(m["drasyl_agent_peer_bytes_total"], peer=PEER1, direction="rx") == 1000
    assert by(m["drasyl_agent_peer_bytes_total"], peer=PEER1, direction="tx") == 2000
    # networks: state as a 0/1 gauge per state, the last fetch's error, what consent refused
    assert by(m["drasyl_agent_network_info"], network=NET, name="Acme", subnet="10.1.0.0/24", ip="10.1.0.1") == 1
    states = {s: by(m["drasyl_agent_network_state"], network=NET, state=s)
              for s in ("active", "disabled", "pending", "not a member", "error", "refused")}
    assert states == {"active": 1, "disabled": 0, "pending": 0, "not a member": 0, "error": 0, "refused": 0}
    assert by(m["drasyl_agent_network_state"], network="http://lab.example/net.toml", state="disabled") == 1
    assert by(m["drasyl_agent_network_error"], network=NET) == 1
    assert by(m["drasyl_agent_network_refused"], network=NET) == 2
    assert by(m["drasyl_agent_network_insecure"], network="http://lab.example/net.toml") == 1
    assert m["drasyl_agent_conflicts"] == {(): 1}
    assert m["drasyl_agent_dropped_packets_total"] == {(("reason", "rx_policy_denied"),): 3,
                                                       (("reason", "tx_policy_denied"),): 7}
    assert "user:secret" not in body and "# HELP drasyl_agent_peer_path 1 for the path" in body


def test_each_scrape_reads_the_status_then(agent: FakeAgent, served: Served) -> None:
    assert agent.calls == 0  # nothing is read between scrapes
    scrape(served.url())
    agent.current["peers"][0].update(path="tcp", rx_bytes=5000)
    agent.current["peers"].pop()  # a peer that left has no series any more
    agent.current["drops"]["rx_oversize"] = 1
    m = samples(scrape(served.url())[2])
    assert agent.calls == 2
    assert by(m["drasyl_agent_peer_path"], peer=PEER1, path="tcp") == 1
    assert by(m["drasyl_agent_peer_bytes_total"], peer=PEER1, direction="rx") == 5000
    assert {dict(labels)["peer"] for labels in m["drasyl_agent_peer_path"]} == {PEER1}
    assert by(m["drasyl_agent_dropped_packets_total"], reason="rx_oversize") == 1


def test_only_metrics_is_served(served: Served) -> None:
    assert scrape(served.url("/"))[0] == 404
    assert scrape(served.url("/status"))[0] == 404


def test_a_token_file_makes_the_token_required(agent: FakeAgent, tmp_path: Path) -> None:
    (tmp_path / "metrics.token").write_text("s3cret\n")
    server = Served(agent, MetricsSettings(("127.0.0.1", 0), str(tmp_path / "metrics.token")))
    try:
        assert scrape(server.url())[0] == 401
        assert scrape(server.url(), token="wrong")[0] == 401
        assert agent.calls == 0  # refused before the status is read
        code, _, body = scrape(server.url(), token="s3cret")
        assert code == 200 and "drasyl_agent_info" in body
    finally:
        server.close()


@pytest.mark.parametrize("content, error", [(None, "cannot read token_file"), ("\n", "is empty")])
def test_an_unreadable_or_empty_token_file_stops_the_start(agent, tmp_path, content, error) -> None:
    path = tmp_path / "metrics.token"
    if content is not None:
        path.write_text(content)
    with pytest.raises(AgentError, match=error):
        asyncio.run(AgentMetrics.start(agent, MetricsSettings(("127.0.0.1", 0), str(path))))


def test_a_taken_port_stops_the_start(agent) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(AgentError, match=f"metrics: cannot listen on 127.0.0.1:{port}"):
            asyncio.run(AgentMetrics.start(agent, MetricsSettings(("127.0.0.1", port))))


# --- [metrics] in config.toml and DRASYL_AGENT_METRICS_LISTEN ---------------------------------


def config(tmp_path: Path, metrics: str = "") -> AgentConfig:
    ident = low_identity()
    path = tmp_path / "config.toml"
    path.write_text(f'[identity]\nsk = "{ident.secret_key.hex()}"\npow = {ident.proof_of_work}\n\n{metrics}')
    return AgentConfig.load(path, difficulty=LOW_DIFFICULTY)


def test_metrics_are_off_by_default(tmp_path) -> None:
    settings = config(tmp_path).metrics
    assert settings == MetricsSettings() and settings.listen is None
    assert settings.with_env({}).listen is None


def test_metrics_table_with_a_relative_token_file(tmp_path) -> None:
    cfg = config(tmp_path, '[metrics]\nlisten = "0.0.0.0:9899"\ntoken_file = "metrics.token"\nport = 1\n')
    assert cfg.metrics == MetricsSettings(("0.0.0.0", 9899), str(tmp_path / "metrics.token"))
    assert cfg.warnings == (f"{tmp_path / 'config.toml'}: metrics.port: unknown key ignored",)


@pytest.mark.parametrize("table, error", [
    ('listen = "0.0.0.0:9899"', "metrics.listen: not a loopback address: set \\[metrics\\] token_file"),
    ('listen = "metrics.example.org:9899"', "metrics.listen: not a loopback address"),
    ('listen = "127.0.0.1"', "metrics.listen: address '127.0.0.1' is invalid"),
    ("listen = 9899", "metrics.listen: expected a string"),
    ('listen = "127.0.0.1:9899"\ntoken_file = ""', "metrics.token_file: empty"),
])
def test_metrics_table_mistakes(tmp_path, table, error) -> None:
    with pytest.raises(AgentConfigError, match=error):
        config(tmp_path, f"[metrics]\n{table}\n")


@pytest.mark.parametrize("listen", ["127.0.0.1:9899", "[::1]:9899", "localhost:9899", "127.0.0.53:1"])
def test_loopback_needs_no_token(tmp_path, listen) -> None:
    assert config(tmp_path, f'[metrics]\nlisten = "{listen}"\n').metrics.listen is not None


def test_environment_overrides_listen(tmp_path) -> None:
    on = config(tmp_path, '[metrics]\nlisten = "127.0.0.1:9899"\ntoken_file = "t"\n').metrics
    assert on.with_env({METRICS_ENV: ""}).listen is None
    assert on.with_env({METRICS_ENV: "0.0.0.0:9000"}).listen == ("0.0.0.0", 9000)  # the file's token applies
    off = MetricsSettings()
    assert off.with_env({METRICS_ENV: "[::1]:9000"}) == MetricsSettings(("::1", 9000))
    with pytest.raises(ConfigError, match=f"{METRICS_ENV}='0.0.0.0:9000': not a loopback address"):
        off.with_env({METRICS_ENV: "0.0.0.0:9000"})
    with pytest.raises(ConfigError, match=f"{METRICS_ENV} 'nonsense' is invalid"):
        off.with_env({METRICS_ENV: "nonsense"})


def test_prometheus_push_table_is_accepted_with_a_warning(tmp_path) -> None:
    cfg = config(tmp_path, '[prometheus]\nurl = "https://push.example.org"\nuser = "u"\npass = "p"\n')
    assert cfg.metrics.listen is None
    assert cfg.warnings == (f"{tmp_path / 'config.toml'}: prometheus: ignored: this agent does not push metrics "
                            "to a Pushgateway; set [metrics] listen and let Prometheus scrape it",)


def test_a_metrics_change_on_reload_needs_a_restart(tmp_path) -> None:
    cfg = config(tmp_path)
    path = Path(cfg.path)
    path.write_text(path.read_text() + '\n[metrics]\nlisten = "127.0.0.1:9899"\n')
    new, changes = cfg.reload()
    assert changes.restart_needed == ("metrics",) and new.metrics.listen == ("127.0.0.1", 9899)
