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


AGENT_PROBE = """
import asyncio, sys
import drasyl.agent.daemon, drasyl.agent.cli
from drasyl.agent.fetch import OnDemandSession, fetch_config_text
print(*(name in sys.modules for name in ("aiohttp.web", "aiohttp.client", "pyroute2.iproute.linux", "pyroute2.ndb",
                                         "prometheus_client")))
from aiohttp import web

async def main():
    app = web.Application()
    app.router.add_get("/net.toml", lambda request: web.Response(text=request.headers["drasyl-pk"]))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    session = OnDemandSession()
    try:
        print(await fetch_config_text(f"http://127.0.0.1:{port}/net.toml", "pk-hex", session))
    finally:
        await session.close()
        await runner.cleanup()
    print("aiohttp.client" in sys.modules)

asyncio.run(main())
"""


def test_agent_loads_aiohttp_client_all_of_pyroute2_and_prometheus_client_only_on_demand() -> None:
    out = subprocess.run([sys.executable, "-c", AGENT_PROBE], capture_output=True, text=True, env=python_env(),
                         timeout=60)
    assert out.returncode == 0, out.stderr
    # at start: aiohttp.web but not its client, pyroute2's IPRoute but not NDB, no prometheus_client (only
    # with [metrics] listen); the client at the first fetch
    assert out.stdout.splitlines() == ["True False True False False", "pk-hex", "True"]
