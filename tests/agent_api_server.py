"""A real agent REST API for tests: :class:`ApiServer` on a Unix socket in the test's directory
and on 127.0.0.1, with a config-backed control.

:class:`ConfigControl` is a small but real :class:`~drasyl.agent.api.AgentControl`: it
edits a real config.toml and reports :func:`~drasyl.agent.api.config_status`. The server runs
in its own thread and event loop, so blocking clients (urllib, the CLI in a subprocess) can
talk to it from the test.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import threading
from pathlib import Path
from typing import Any

from drasyl.agent.api import ApiServer, TokenFile, config_status
from drasyl.agent.config import AgentConfig
from drasyl.identity import Identity

START_TIMEOUT_S = 10.0


class ConfigControl:
    """Networks live in config.toml only (no TUN): enough to drive every API endpoint."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config

    def status(self) -> dict[str, Any]:
        return config_status(self.config)

    def add(self, url: str, force: bool = False) -> str | None:
        self.config = self.config.add_network(url)
        return " (forced)" if force else None

    def remove(self, url: str) -> None:
        self.config = self.config.remove_network(url)

    async def enable(self, url: str) -> None:  # one async method: the API awaits those too
        self.config = self.config.set_disabled(url, False)

    def disable(self, url: str) -> None:
        self.config = self.config.set_disabled(url, True)


class ServerThread:
    """``with ServerThread(control, token_file) as server: server.port``; the run directory is
    ``run`` next to the token file, TCP any free port of 127.0.0.1 unless ``listen`` says."""

    def __init__(self, control: ConfigControl, token: TokenFile,
                 listen: tuple[str, int] | None = ("127.0.0.1", 0)) -> None:
        self.control = control
        self.token = token
        self.listen = listen
        self.run_dir = token.path.parent / "run"
        self.port: int | None = None
        self.api: ApiServer | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = self.api = ApiServer(self.control, self.token, self.listen, self.run_dir)
        try:
            await server.start()
            self.port = server.port
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        await self._stop.wait()
        await server.close()

    def __enter__(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            raise AssertionError(f"API server did not start within {START_TIMEOUT_S} s")
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(START_TIMEOUT_S)
        assert not self._thread.is_alive(), "API server thread did not stop"


def token_file(tmp_path: Path, token: str = "t0ken-for-tests") -> TokenFile:
    """A token file in ``tmp_path`` whose fallback is in ``tmp_path`` too (never ~/.drasyl)."""
    path = tmp_path / "auth.token"
    path.write_text(token + "\n")
    path.chmod(0o600)
    return TokenFile(path, fallback=str(tmp_path / "home" / ".drasyl" / "auth.token"))


LOW_DIFFICULTY = 6
SECRET_URL = "https://user:secret@config.example.com/acme.toml"


@functools.cache
def low_identity() -> Identity:
    return Identity.generate(LOW_DIFFICULTY)


def make_config(tmp_path: Path) -> AgentConfig:
    """A config.toml with a low-difficulty identity, one super peer and a network with a password."""
    ident = low_identity()
    path = tmp_path / "config.toml"
    path.write_text(
        "# written by the test\n"
        'super_peers = ["udp://sp.example.org:22527?publicKey='
        '5b4578909bf0ad3565bb5faf843a9f68b325dd87451f6cb747e49d82f6ce5f4c&networkId=1&tcpPort=8443"]\n\n'
        f'[identity]\nsk = "{ident.secret_key.hex()}"\npow = {ident.proof_of_work}\n\n'
        f'[[network]]\nconfig_url = "{SECRET_URL}"\nname = "Acme"\n'
    )
    path.chmod(0o600)
    return AgentConfig.load(path, difficulty=LOW_DIFFICULTY)


SQUATTER = """
import socket, sys
with socket.create_server((sys.argv[1], int(sys.argv[2]))) as server:
    print("listening", server.getsockname()[1], flush=True)
    while True:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(30)
            try:
                print("received", len(conn.recv(65536)), flush=True)
            except OSError as exc:
                print("received error", exc, flush=True)
"""


def squatter_argv(host: str = "127.0.0.1", port: int = 0) -> list[str]:
    """A process of user nobody on ``host:port`` that prints ``listening <port>``, then per
    connection ``received <n>``: the bytes of its first read (0: closed without sending).
    The system's python3: nobody cannot reach a Python under /root."""
    python = shutil.which("python3", path=os.defpath)
    assert python is not None, "no python3 in /bin:/usr/bin"
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", python, "-c", SQUATTER, host, str(port)]
