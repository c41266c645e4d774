"""Shared fixtures: the identities and vectors of tests/vectors (no fresh 24-bit PoW)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from drasyl.identity import Identity

VECTORS = Path(os.environ.get("DRASYL_VECTORS", Path(__file__).resolve().parent / "vectors"))


def load_vectors(name: str) -> dict:
    path = VECTORS / name
    if not path.exists():
        pytest.fail(f"test vectors not found at {path} (set DRASYL_VECTORS)")
    return json.loads(path.read_text())


@pytest.fixture(scope="session")
def derived() -> dict:
    return load_vectors("derived.json")


@pytest.fixture(scope="session")
def capture() -> dict:
    return load_vectors("drasyl-rs-capture.json")


@pytest.fixture(scope="session")
def ids(derived) -> dict[str, Identity]:
    """id_1, id_2, id_3: real difficulty-24+ identities from the drasyl-rs sources."""
    return {
        name: Identity.from_hex(v["secret_key_hex"], v["proof_of_work"])
        for name, v in derived["identities"].items()
    }


def pytest_addoption(parser) -> None:
    parser.addoption("--sp-workers", type=int, default=1, dest="sp_workers",
                     help="DRASYL_WORKERS of the super peer processes the daemon tests start (default 1)")


#: Tables that tests leave for the end of the run (title -> lines), printed after the results
#: so that a CI log shows them (e.g. test_nat_lab's scenario summary).
SUMMARIES = pytest.StashKey[dict[str, list[str]]]()


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    for title, lines in config.stash.get(SUMMARIES, {}).items():
        terminalreporter.write_sep("=", title)
        for line in lines:
            terminalreporter.write_line(line)
