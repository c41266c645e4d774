"""Start a real super peer subprocess on loopback for a benchmark, and read its RSS and CPU.

Two implementations, configured alike (UDP on 127.0.0.1 only, no TCP, PoW difficulty 0 for
the simulated nodes, no metrics, no peer table printout): ours (``python -m
drasyl.superpeer``) and the drasyl-rs ``drasyl-sp`` binary, found in ``$DRASYL_RS_BIN`` or
``../shared/drasyl-rs/``. The super peer runs as its own process (one core), exactly as an
operator runs it; the load generator in the benchmark process uses the other core.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

import psutil

from drasyl.identity import Identity

ROOT = Path(__file__).resolve().parents[1]
OURS = "ours"
DRASYL_RS = "drasyl-rs"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drasyl_rs_binary() -> Path:
    """The drasyl-rs super peer binary: ``$DRASYL_RS_BIN`` (a directory) or ../shared/drasyl-rs/."""
    if os.environ.get("DRASYL_RS_BIN"):
        dirs = [Path(os.environ["DRASYL_RS_BIN"])]
    else:
        dirs = [ROOT.parent / "shared" / "drasyl-rs", ROOT.parents[1] / "shared" / "drasyl-rs"]
    for d in dirs:
        if (d / "drasyl-sp").is_file():
            return d / "drasyl-sp"
    raise FileNotFoundError(f"drasyl-rs' drasyl-sp not found in {', '.join(map(str, dirs))}: "
                            "set DRASYL_RS_BIN to the directory that holds it")


class SuperPeerProcess:
    """A super peer (``kind`` ours or drasyl-rs) on 127.0.0.1 with PoW difficulty 0."""

    def __init__(self, identity: Identity, kind: str = OURS, max_peers: int = 1 << 17,
                 extra_env: dict | None = None) -> None:
        self.identity = identity
        self.kind = kind
        self.port = free_udp_port()
        self.address = ("127.0.0.1", self.port)
        self.dir = tempfile.TemporaryDirectory(prefix="drasyl-bench-")
        ident = os.path.join(self.dir.name, "sp.identity")
        identity.save(ident)
        env = dict(os.environ)
        env.update({
            "DRASYL_IDENTITY_FILE": ident,
            "DRASYL_UDP4_LISTEN": f"127.0.0.1:{self.port}",
            "DRASYL_UDP6_LISTEN": "",
            "DRASYL_TCP4_LISTEN": "",
            "DRASYL_TCP6_LISTEN": "",
            "DRASYL_PROMETHEUS_LISTEN": "",
            "DRASYL_PEERS_PRINT_INTERVAL": "0",
            "DRASYL_MIN_POW_DIFFICULTY": "0",
            "DRASYL_MAX_PEERS": str(max_peers),  # a power of two for drasyl-rs
        })
        if kind == OURS:
            env["PYTHONPATH"] = str(ROOT)
            cmd = [sys.executable, "-m", "drasyl.superpeer"]
        else:
            env.pop("RUST_LOG", None)  # errors only
            cmd = [str(drasyl_rs_binary())]
        env.update(extra_env or {})
        # cwd: not the caller's, which `python -m` would put first on sys.path, before PYTHONPATH
        self.proc = subprocess.Popen(cmd, env=env, cwd=self.dir.name, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.output: deque[str] = deque(maxlen=50)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.output.append(line)
            if re.search(rf"udp://127\.0\.0\.1:{self.port}\?publicKey=", line):
                self.url = line.strip()
                # keep reading, so a chatty super peer never blocks on a full pipe
                threading.Thread(target=self._drain_output, daemon=True).start()
                self._ps = psutil.Process(self.proc.pid)
                return
        self.stop()
        raise RuntimeError(f"{kind} super peer did not start:\n" + "".join(self.output))

    def _drain_output(self) -> None:
        for line in self.proc.stdout:
            self.output.append(line)

    def rss(self) -> int:
        return self._ps.memory_info().rss

    def cpu_seconds(self) -> float:
        t = self._ps.cpu_times()
        return t.user + t.system

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.dir.cleanup()
