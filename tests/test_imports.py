"""drasyl.imports: a package's submodules without its ``__init__``, and the agent's imports that rely on it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from netns import python_env

PROBE = """
import sys
sys.path.insert(0, {path!r})
from drasyl.imports import defer_package_init
defer_package_init("pkgx", ("__version__", "MISSING"))
import pkgx.part
print(pkgx.__version__, pkgx.part.VALUE, "INIT" in sys.modules, hasattr(pkgx, "MISSING"))
print(pkgx.late, "INIT" in sys.modules)
"""


def test_submodule_without_init_then_init_on_first_other_name(tmp_path: Path) -> None:
    package = tmp_path / "pkgx"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent("""\
        __version__ = "1.2.3"
        import sys
        sys.modules["INIT"] = sys
        late = "from init"
    """))
    (package / "part.py").write_text("from . import __version__\nVALUE = 'part ' + __version__\n")
    out = subprocess.run([sys.executable, "-c", PROBE.format(path=str(tmp_path))], capture_output=True, text=True,
                         env=python_env(), timeout=30)
    assert out.returncode == 0, out.stderr
    # MISSING: not a constant of the source; asking for it ran the real __init__, which lacks it
    assert out.stdout.splitlines() == ["1.2.3 part 1.2.3 False False", "from init True"]
