"""Network-config TOML parsed in a child process (drasyl.agent.isolate): real subprocesses."""

from __future__ import annotations

import asyncio

import pytest

from drasyl.agent import isolate
from drasyl.agent.netconfig import MAX_TEXT_BYTES, NetworkConfigError, load_toml


def parsed(text: str) -> dict:
    async def go() -> dict:
        return isolate.document(await isolate.parse_toml(text, "net.toml"), "net.toml")
    return asyncio.run(go())


def error(text: str) -> str:
    with pytest.raises(NetworkConfigError) as info:
        parsed(text)
    return str(info.value)


def test_the_child_returns_the_document_the_parser_in_process_would():
    text = 'network = "10.1.0.0/24"\nname = "Acme"\n[[node]]\npk = "ab"\nwhen = 1979-05-27T07:32:00Z\n'
    assert parsed(text) == load_toml(text, "net.toml")


@pytest.mark.parametrize("text", ["a = = 1\n", "x = " + "[" * 100_000 + "]" * 100_000 + "\n"], ids=["syntax", "nested"])
def test_parser_failures_read_as_in_process(text):
    with pytest.raises(NetworkConfigError) as in_process:
        load_toml(text, "net.toml")
    assert error(text) == str(in_process.value)
    assert "nested too deeply" in error(text) or "invalid TOML" in error(text)


def test_a_text_over_the_limit_never_reaches_a_child():
    assert error("#" * (MAX_TEXT_BYTES + 1)) == "network config net.toml: larger than 4 MiB"


def test_a_child_that_takes_too_long_is_killed(monkeypatch):
    monkeypatch.setattr(isolate, "PARSE_TIMEOUT_S", 0.001)
    assert error("x = 1\n" * 200_000).endswith("parsing took longer than 0.001 s")


def test_a_child_that_dies_is_that_configs_error(monkeypatch):
    monkeypatch.setattr(isolate, "_CHILD", "import os; os.abort()")
    assert "the TOML parser failed" in error("x = 1\n")
