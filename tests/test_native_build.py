"""The C accelerators are optional at install (setup.py): no compiler means no module, and no error.

Builds this checkout's extensions in a scratch copy with setuptools, as ``pip install`` does:
once with a compiler that fails (``CC=/bin/false``: the build must succeed without any ``.so``)
and once with the real one, when there is one (every extension must then be built).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def build(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, list[Path]]:
    tree = tmp_path / "tree"
    shutil.copytree(REPO, tree, ignore=shutil.ignore_patterns(".git", "*.so", "build", "__pycache__", "tests",
                                                                "bench", "docs", ".hypothesis", "*.egg-info"))
    result = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=tree,
                            capture_output=True, text=True, timeout=300, env={**os.environ, **env})
    return result, sorted((tree / "drasyl").rglob("*.so"))  # in place: where Python imports them


def test_without_a_compiler_the_build_succeeds_and_builds_nothing(tmp_path):
    result, built = build(tmp_path, CC="/bin/false")
    assert result.returncode == 0, result.stderr
    assert built == []
    assert "failed" in result.stderr.lower() or "warning" in result.stderr.lower(), result.stderr


def test_with_a_compiler_every_accelerator_is_built(tmp_path):
    if shutil.which("cc") is None and os.environ.get("CI") != "true":
        pytest.skip("no C compiler here")
    result, built = build(tmp_path)
    assert result.returncode == 0, result.stderr
    modules = {str(p.relative_to(tmp_path / "tree")).split(".")[0] for p in built}
    expected = {src[:-2] for src in (REPO / "setup.py").read_text().split('"') if src.endswith(".c")}
    assert len(expected) == 2 and modules == expected, result.stderr
