"""The CLI against a squatter: a process of user nobody that took 127.0.0.1:22527 (while the
agent was down) in a network namespace of its own, and records what it receives."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent_api_server import squatter_argv, token_file
from netns import Lab, lab, python_env  # noqa: F401 (lab is a fixture)

pytestmark = pytest.mark.netns

NOBODY = 65534


def cli(ns: str, home: Path, *args: str) -> subprocess.CompletedProcess:
    """``drasyl-agent`` in ``ns`` with the default API address and this test's HOME."""
    env = python_env(HOME=str(home))
    for name in ("DRASYL_API_LISTEN", "DRASYL_RUN_DIR"):
        env.pop(name, None)
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "drasyl.agent", *args],
                          capture_output=True, text=True, timeout=60, env=env)


def test_the_cli_sends_no_token_to_a_squatter_on_the_agents_port(lab: Lab, tmp_path) -> None:
    ns = lab.namespace("squat")
    squatter = lab.start(ns, squatter_argv("127.0.0.1", 22527), "squatter")
    squatter.wait_for_line(r"^listening 22527$", 10)
    token = token_file(tmp_path).path  # root's
    args = ("status", "--token", str(token), "--run-dir", str(tmp_path / "run"))
    result = cli(ns, tmp_path, *args)
    assert (result.returncode, result.stdout, result.stderr) == (1, "", (
        "drasyl-agent status: not sending the API token: 127.0.0.1:22527 is held by uid 65534, not by root "
        "(is another program squatting the agent's port?)\n"))
    assert squatter.wait_for_line(r"^received ", 10).text == "received 0"
    # A token of nobody's is nobody's to have: the CLI sends it (and the squatter hangs up).
    os.chown(token, NOBODY, -1)
    result = cli(ns, tmp_path, *args)
    assert result.returncode == 1 and result.stderr.startswith(
        "drasyl-agent status: no answer from the agent's API at 127.0.0.1:22527: "), result.stderr
    assert int(squatter.wait_for_line(r"^received (\d+)$", 10).match[1]) > 0
