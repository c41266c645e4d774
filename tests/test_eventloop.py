"""The daemons' event loop choice (drasyl/eventloop.py): uvloop by default where installed,
asyncio's own on request, a bad value a one-line error naming the variable."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
from netns import python_env

from drasyl import eventloop
from drasyl.errors import ConfigError


async def _loop_name() -> str:
    return eventloop.name()


@pytest.mark.parametrize("value", ["auto", "uvloop"])
def test_uvloop_is_the_default_where_installed(monkeypatch, value):
    pytest.importorskip("uvloop")  # a dependency on Linux x86_64/aarch64 (pyproject.toml)
    monkeypatch.setenv("DRASYL_EVENT_LOOP", value)
    assert eventloop.run(_loop_name()) == "uvloop"


def test_asyncio_on_request(monkeypatch):
    monkeypatch.setenv("DRASYL_EVENT_LOOP", "asyncio")
    assert eventloop.run(_loop_name()) == "asyncio"


def test_a_bad_value_is_an_error_and_nothing_runs(monkeypatch):
    monkeypatch.setenv("DRASYL_EVENT_LOOP", "tokio")
    ran = []

    async def main() -> None:
        ran.append(True)

    with pytest.raises(ConfigError, match=r"DRASYL_EVENT_LOOP='tokio' is invalid: expected auto, uvloop or asyncio"):
        eventloop.run(main())
    assert not ran
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()  # no loop left behind


def test_the_agent_reports_a_bad_value_in_one_line(tmp_path):
    config = tmp_path / "config.toml"
    result = subprocess.run(
        [sys.executable, "-m", "drasyl.agent", "run", "--config", str(config), "--token", str(tmp_path / "t"),
         "--api", "", "--run-dir", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=60,
        env=python_env(DRASYL_EVENT_LOOP="fast", DRASYL_MIN_POW_DIFFICULTY="0"))
    assert result.returncode == 1, result.stderr
    assert "DRASYL_EVENT_LOOP='fast' is invalid" in result.stderr
    assert "Traceback" not in result.stderr
    assert not os.path.exists(config)  # checked before the first start makes an identity
