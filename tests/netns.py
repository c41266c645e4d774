"""Test labs in Linux network namespaces, and watched subprocesses.

:class:`Lab` builds a small fake internet: uniquely named namespaces (``dpt-<random>-<role>``),
veth pairs created directly inside them (the root namespace is never touched), a hub
namespace with a bridge for the 198.51.100.0/24 (and 2001:db8::/64) "internet", nftables
rulesets per namespace, per-namespace ``/etc`` files, and processes started inside a namespace. :meth:`Lab.close` always kills every process in
its namespaces (``ip netns pids``) and deletes the namespaces, also when a test fails; the
:func:`lab` fixture does that as a finalizer.

:class:`Process` runs a command (in a namespace or not), reads its stdout and stderr lines in
background threads, and lets a test wait for a line matching a regex with a deadline. A
failed wait names the regex and shows the output so far. Nothing here sleeps to synchronise.

This module builds and watches; it asserts nothing about drasyl.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PREFIX = "dpt-"
INTERNET_PREFIX_LEN = 24  # addresses are 198.51.100.x/24
INTERNET6_PREFIX_LEN = 64  # and 2001:db8::x/64
ETC_NETNS = Path("/etc/netns")
REPO = Path(__file__).resolve().parents[1]
STOP_TIMEOUT = 5.0
TAIL_LINES = 60


def python_env(**env: str) -> dict[str, str]:
    """The current environment plus ``env``, with this checkout importable and output unbuffered."""
    merged = dict(os.environ)
    merged["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")]))
    merged["PYTHONUNBUFFERED"] = "1"
    merged.update(env)
    return merged


@dataclass(frozen=True)
class Line:
    """One line of output: its text, index in the stream, and ``time.monotonic()`` when read."""

    text: str
    index: int
    at: float
    match: re.Match | None = None


class _Stream:
    """Lines of one pipe, appended by a reader thread."""

    def __init__(self, pipe, cond: threading.Condition) -> None:
        self.lines: list[Line] = []
        self.eof = False
        self._cond = cond
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe) -> None:
        try:
            for raw in iter(pipe.readline, b""):
                text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                with self._cond:
                    self.lines.append(Line(text, len(self.lines), time.monotonic()))
                    self._cond.notify_all()
        except (OSError, ValueError):
            pass
        finally:
            with self._cond:
                self.eof = True
                self._cond.notify_all()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


class Process:
    """A subprocess whose stdout/stderr lines are collected by threads and can be waited for."""

    def __init__(self, argv: list[str], name: str, env: dict[str, str] | None = None,
                 cwd: str | Path | None = None, eof_stops: bool = True) -> None:
        self.name = name
        self.argv = argv
        #: Whether the process ends at end of stdin; if not (drasyl-rs' example node busy-loops
        #: there), :meth:`stop` signals it before closing stdin.
        self.eof_stops = eof_stops
        self.started = time.monotonic()
        self.popen = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, env=env, cwd=cwd or REPO)
        self._cond = threading.Condition()
        self.stdout = _Stream(self.popen.stdout, self._cond)
        self.stderr = _Stream(self.popen.stderr, self._cond)
        self._cursor = 0
        #: What a failed wait shows; a :class:`Lab` makes it show all of its processes.
        self.context: Callable[[], str] = self.describe

    @property
    def pid(self) -> int:
        return self.popen.pid

    def mark(self) -> int:
        """Index of the next stdout line: pass as ``since`` to look only at later output."""
        with self._cond:
            return len(self.stdout.lines)

    def wait_for_line(self, pattern: str, timeout: float, since: int | None = None) -> Line:
        """The first stdout line from ``since`` (default: after the last match) matching
        ``pattern`` (``re.search``); fails after ``timeout`` s or when stdout ends."""
        regex = re.compile(pattern)
        start = self._cursor if since is None else since
        deadline = time.monotonic() + timeout
        with self._cond:
            i = start
            while True:
                lines = self.stdout.lines
                while i < len(lines):
                    m = regex.search(lines[i].text)
                    if m:
                        self._cursor = i + 1
                        line = lines[i]
                        return Line(line.text, line.index, line.at, m)
                    i += 1
                if self.stdout.eof:
                    why = "stdout ended"
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    why = f"no match within {timeout:g} s"
                    break
                self._cond.wait(left)
        raise AssertionError(f"{self.name}: waiting for a line matching {pattern!r}: {why}\n{self.context()}")

    def lines_since(self, since: int) -> list[str]:
        with self._cond:
            return [line.text for line in self.stdout.lines[since:]]

    def write(self, *lines: str) -> None:
        """Write lines to stdin (each gets a newline) and flush."""
        assert self.popen.stdin is not None
        self.popen.stdin.write("".join(f"{line}\n" for line in lines).encode())
        self.popen.stdin.flush()

    def close_stdin(self) -> None:
        if self.popen.stdin is not None and not self.popen.stdin.closed:
            try:
                self.popen.stdin.close()
            except OSError:
                pass

    def wait(self, timeout: float) -> int:
        """Exit code; fails (with the output) if the process has not exited within ``timeout``."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name}: still running after {timeout:g} s\n{self.context()}") from None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after :data:`STOP_TIMEOUT`; reap and join the reader threads."""
        if self.eof_stops:
            self.close_stdin()
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(STOP_TIMEOUT)
        self.close_stdin()
        self.stdout.join(STOP_TIMEOUT)
        self.stderr.join(STOP_TIMEOUT)

    def kill(self) -> None:
        """SIGKILL (a crash: no clean-up by the process), reap, join the reader threads."""
        self.close_stdin()
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(STOP_TIMEOUT)
        self.stdout.join(STOP_TIMEOUT)
        self.stderr.join(STOP_TIMEOUT)

    def describe(self) -> str:
        rc = self.popen.poll()
        state = "running" if rc is None else f"exited with {rc}"
        with self._cond:
            out = [line.text for line in self.stdout.lines[-TAIL_LINES:]]
            err = [line.text for line in self.stderr.lines[-TAIL_LINES:]]
        return (f"--- {self.name} ({state}, {time.monotonic() - self.started:.1f} s after start): "
                f"last {len(out)} stdout lines:\n" + "\n".join(out) +
                f"\n--- last {len(err)} stderr lines:\n" + "\n".join(err) + "\n---")


def run(argv: list[str], input: str | None = None) -> str:
    """Run a setup command; on failure raise with its stderr."""
    result = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


class Lab:
    """Namespaces, links and processes of one test; :meth:`close` removes all of it."""

    def __init__(self) -> None:
        self.tag = PREFIX + secrets.token_hex(3)
        self.namespaces: list[str] = []
        self.processes: list[Process] = []
        self._hub: str | None = None
        self._ifaces: dict[str, int] = {}
        self._closed = False
        atexit.register(self.close)  # also if the test run is interrupted

    # --- building ---------------------------------------------------------------------

    def namespace(self, role: str) -> str:
        """A new namespace ``dpt-<random>-<role>`` with ``lo`` up."""
        ns = f"{self.tag}-{role}"
        run(["ip", "netns", "add", ns])
        self.namespaces.append(ns)
        self.ip(ns, "link", "set", "lo", "up")
        return ns

    def ip(self, ns: str, *args: str) -> str:
        return run(["ip", "-n", ns, *args])

    def exec(self, ns: str, *argv: str, input: str | None = None) -> str:
        return run(["ip", "netns", "exec", ns, *argv], input=input)

    def sysctl(self, ns: str, key: str, value: str) -> None:
        self.exec(ns, "sysctl", "-q", "-w", f"{key}={value}")

    def veth(self, ns1: str, ns2: str, addr1: str | None = None, addr2: str | None = None) -> tuple[str, str]:
        """A veth pair between two namespaces, both ends up; addresses as ``ip/len``."""
        if1, if2 = self._iface(ns1), self._iface(ns2)
        self.ip(ns1, "link", "add", if1, "type", "veth", "peer", "name", if2, "netns", ns2)
        for ns, iface, addr in ((ns1, if1, addr1), (ns2, if2, addr2)):
            if addr:
                self.ip(ns, "addr", "add", addr, "dev", iface)
            self.ip(ns, "link", "set", iface, "up")
        return if1, if2

    def internet(self, ns: str, address: str, address6: str | None = None) -> str:
        """Attach ``ns`` to the lab's 198.51.100.0/24 bridge with ``address`` (and, given
        ``address6``, 2001:db8::/64 with that one); its interface."""
        if self._hub is None:
            hub = self.namespace("hub")
            self.ip(hub, "link", "add", "br0", "type", "bridge")
            self.ip(hub, "link", "set", "br0", "up")
            self._hub = hub
        iface, port = self.veth(ns, self._hub, f"{address}/{INTERNET_PREFIX_LEN}")
        if address6:
            self.ip(ns, "addr", "add", f"{address6}/{INTERNET6_PREFIX_LEN}", "dev", iface, "nodad")
        self.ip(self._hub, "link", "set", port, "master", "br0")
        return iface

    def etc_file(self, ns: str, name: str, text: str) -> Path:
        """``/etc/netns/<ns>/<name>``: ``ip netns exec`` binds it over ``/etc/<name>``, so a
        process in ``ns`` that edits e.g. ``/etc/hosts`` never touches the machine's."""
        path = ETC_NETNS / ns / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def _iface(self, ns: str) -> str:
        n = self._ifaces.get(ns, 0)
        self._ifaces[ns] = n + 1
        return f"eth{n}"

    def nft(self, ns: str, ruleset: str) -> None:
        """Apply an nftables ruleset (``nft -f -``) inside ``ns``."""
        self.exec(ns, "nft", "-f", "-", input=ruleset)

    def nft_packets(self, ns: str) -> dict[str, int]:
        """Packets counted so far by every named nftables counter in ``ns``, by name."""
        out = json.loads(self.exec(ns, "nft", "-j", "list", "counters"))
        return {item["counter"]["name"]: item["counter"]["packets"] for item in out["nftables"] if "counter" in item}

    # --- processes --------------------------------------------------------------------

    def start(self, ns: str, argv: list[str], name: str, env: dict[str, str] | None = None,
              eof_stops: bool = True) -> Process:
        """Start ``argv`` inside ``ns`` (``ip netns exec`` execs it: the pid is the command's)."""
        proc = Process(["ip", "netns", "exec", ns, *argv], f"{name}@{ns}", env, eof_stops=eof_stops)
        proc.context = self.describe
        self.processes.append(proc)
        return proc

    def start_python(self, ns: str, module: str, name: str, **env: str) -> Process:
        """``python -m module`` inside ``ns`` with this checkout and ``env``."""
        return self.start(ns, [sys.executable, "-m", module], name, python_env(**env))

    def describe(self) -> str:
        return "\n".join(p.describe() for p in self.processes)

    # --- cleanup ----------------------------------------------------------------------

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop our processes, kill whatever else runs in our namespaces, delete them."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        errors: list[str] = []
        for proc in self.processes:
            try:
                proc.stop()
            except Exception as exc:  # keep cleaning up
                errors.append(f"{proc.name}: {exc!r}")
        for ns in reversed(self.namespaces):
            try:
                pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                                      timeout=10).stdout.split()
                for pid in pids:
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
                shutil.rmtree(ETC_NETNS / ns, ignore_errors=True)
            except Exception as exc:
                errors.append(f"{ns}: {exc!r}")
        if errors:
            raise RuntimeError("lab cleanup incomplete: " + "; ".join(errors))


def require_lab_tools() -> None:
    """Fail (not skip: CI runs as root) with a clear message if the lab cannot be built."""
    if os.geteuid() != 0:
        pytest.fail("netns tests need root (deselect them with -m 'not netns')", pytrace=False)
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            pytest.fail(f"netns tests need '{tool}' (iproute2, nftables)", pytrace=False)


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A :class:`Lab` that is torn down after the test, whatever the outcome."""
    require_lab_tools()
    with Lab() as lab:
        yield lab
