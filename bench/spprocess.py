"""Start a real ``drasyl-sp`` subprocess on loopback for a benchmark, and read its RSS.

The super peer runs as its own process (one core), exactly as an operator runs it; the
load generator in the benchmark process uses the other core.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from drasyl.identity import Identity

ROOT = Path(__file__).resolve().parents[1]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SuperPeerProcess:
    """drasyl-sp on 127.0.0.1 with PoW difficulty 0, no TCP, no metrics, no peer table."""

    def __init__(self, identity: Identity, max_peers: int = 1 << 17, extra_env: dict | None = None) -> None:
        self.identity = identity
        self.port = free_udp_port()
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
            "DRASYL_MAX_PEERS": str(max_peers),
            "PYTHONPATH": str(ROOT),
        })
        env.update(extra_env or {})
        self.proc = subprocess.Popen([sys.executable, "-m", "drasyl.superpeer"], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 20
        seen = []
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if re.search(r"udp://127\.0\.0\.1:\d+\?publicKey=", line):
                self.address = ("127.0.0.1", self.port)
                self.url = line.strip()
                return
        self.stop()
        raise RuntimeError("drasyl-sp did not start:\n" + "".join(seen))

    def rss(self) -> int:
        return psutil.Process(self.proc.pid).memory_info().rss

    def cpu_seconds(self) -> float:
        t = psutil.Process(self.proc.pid).cpu_times()
        return t.user + t.system

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.dir.cleanup()
