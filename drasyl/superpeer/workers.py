"""``DRASYL_WORKERS`` > 1: one super peer as several processes on the same ports (Linux).

Why processes: one CPython process runs its protocol code on one core. Each worker is a
forked copy of the parent with its own event loop, sockets and :class:`~.shared.SharedCore`;
they share the listen ports with ``SO_REUSEPORT``, and the kernel hashes each UDP datagram's
and TCP connection's addresses to one worker, so a node's HELLOs and APPs all reach the worker
that owns its registration. Registrations travel between workers over the :mod:`.mesh`, so
every worker can relay to and introduce every node (:mod:`.worker`).

Design choices:

- Steering by the kernel's hash, not a reuseport BPF program keyed by the node's public key: a
  relayed APP's recipient lives in another worker either way, so the table has to be shared,
  and once it is, the hash is enough. A node whose address changes simply moves to another
  worker (the newest HELLO wins).
- Start-up: the parent loads the identity, creates the mesh's socket pairs, forks worker 0,
  waits until it has bound (it reports the bound listeners through a pipe, or exits with its
  one-line bind error), then forks the others onto the ports worker 0 learned (so port 0 works)
  without Prometheus and peer table, waits until they have bound, and prints the start-up
  lines. Worker 0 prints the peer table (its table holds every registration) and serves
  ``/metrics``, adding the other workers' counters at each scrape.
- Stop: SIGINT or SIGTERM to the parent stops every worker (SIGTERM, SIGKILL after
  :data:`STOP_TIMEOUT_S`), exit code 0. A worker that exits on its own ends the super peer: exit
  code 0 if it was stopped by a signal (``systemctl stop`` signals every process of the unit),
  else a message naming the worker and how it ended on stderr and exit code 1, so a supervisor
  such as systemd restarts the whole super peer in a known state; a restarted worker would
  start with an empty table while its nodes' registrations are still current elsewhere.
- No orphans: every worker asks the kernel for SIGKILL when the parent dies
  (``PR_SET_PDEATHSIG``), so killing the parent, even with SIGKILL, kills every worker.

Default 1 (bench/README.md has the numbers): one worker is not CPU bound below about 40 000
HELLO/s; on the 2-vCPU bench machine a second worker needed 1.3-1.5x the CPU per packet (each
wakes up for half the packets) and ~13 MiB more PSS plus its own copy of the table, and raised
the relay ceiling 1.56x in one run of two, the registration ceiling in none (the load generator
had the other core).
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import pickle
import select
import signal
import socket
import sys
import time
import traceback
from typing import NoReturn

from .. import eventloop
from ..identity import Identity
from .cli import PROG, announce_listeners, serve
from .config import DaemonConfig, ListenAddress
from .server import Listener
from .worker import WorkerServer

#: Seconds the workers have to stop after SIGTERM before they are killed.
STOP_TIMEOUT_S = 10.0
#: Seconds a worker has to bind its listeners.
START_TIMEOUT_S = 60.0
_PR_SET_PDEATHSIG = 1
_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGCHLD}
_STOPPED_BY = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}
_LISTEN_FIELDS = {"UDP4": "udp4_listen", "UDP6": "udp6_listen", "TCP4": "tcp4_listen", "TCP6": "tcp6_listen"}

Links = list[dict[int, socket.socket]]  # per worker: peer index -> its end of their socket pair


def supervise(identity: Identity, config: DaemonConfig) -> int:
    """Run ``config.workers`` workers until SIGINT/SIGTERM or until one of them exits."""
    if not sys.platform.startswith("linux"):
        print(f"{PROG}: error: DRASYL_WORKERS > 1 needs Linux (SO_REUSEPORT, PR_SET_PDEATHSIG)", file=sys.stderr)
        return 2
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)  # taken with sigwait below; workers unblock
    links = _socket_pairs(config.workers)
    workers: dict[int, int] = {}  # pid -> worker index
    try:
        listeners = _start(0, identity, config, links, workers)
        if isinstance(listeners, int):
            return listeners
        others = _on_learned_ports(config, listeners)
        for index in range(1, config.workers):
            bound = _start(index, identity, others, links, workers)
            if isinstance(bound, int):
                print(f"{PROG}: worker {index} could not start; stopping the super peer", file=sys.stderr)
                return bound
        announce_listeners(listeners, identity, config.network_id)
        return _wait(workers)
    finally:
        for ends in links:
            for sock in ends.values():
                sock.close()
        _stop(workers)


def _socket_pairs(n: int) -> Links:
    links: Links = [{} for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            links[i][j], links[j][i] = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return links


def _on_learned_ports(config: DaemonConfig, listeners: list[Listener]) -> DaemonConfig:
    """Worker 0's config for the other workers: its bound ports, no Prometheus, no peer table."""
    bound = {_LISTEN_FIELDS[x.name]: ListenAddress(*x.address) for x in listeners if x.name in _LISTEN_FIELDS}
    return dataclasses.replace(config, prometheus_listen=None, peers_print_interval_ms=0, **bound)


def _start(index: int, identity: Identity, config: DaemonConfig, links: Links,
           workers: dict[int, int]) -> list[Listener] | int:
    """Fork worker ``index``; its listeners once it has bound, or its exit code."""
    read_end, write_end = os.pipe()
    parent = os.getpid()
    sys.stdout.flush()  # or the worker would print what is still buffered again
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _run_worker(index, identity, config, links, write_end, parent)
    os.close(write_end)
    for sock in links[index].values():  # the worker has them now
        sock.close()
    workers[pid] = index
    data = _read_ready(read_end)
    os.close(read_end)
    if data:
        return pickle.loads(data)
    if data is None:
        print(f"{PROG}: worker {index} did not bind within {START_TIMEOUT_S:.0f} s", file=sys.stderr)
        _kill(pid, signal.SIGKILL)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    del workers[pid]
    return code or 1


def _read_ready(fd: int) -> bytes | None:
    """What the worker wrote before closing its end: empty if it exited before it had bound,
    None if it did neither within :data:`START_TIMEOUT_S`."""
    chunks = []
    deadline = time.monotonic() + START_TIMEOUT_S
    while (left := deadline - time.monotonic()) > 0:
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    return None


def _run_worker(index: int, identity: Identity, config: DaemonConfig, links: Links, ready: int,
                parent: int) -> NoReturn:
    """The child: serve as worker ``index``, then exit (never return into the parent's code)."""
    code = 1
    try:
        _die_with(parent)
        for i, ends in enumerate(links):
            if i != index:
                for sock in ends.values():
                    sock.close()

        def bound(listeners: list[Listener]) -> None:
            os.write(ready, pickle.dumps(listeners))
            os.close(ready)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)  # the loop handles them now

        server = WorkerServer(identity, config, index, links[index])
        code = eventloop.run(serve(identity, config, server, bound))
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _die_with(parent: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent:  # the parent died before prctl
        os._exit(1)


def _wait(workers: dict[int, int]) -> int:
    """Until a signal (exit code 0) or a worker's exit (0 if a signal stopped it, else 1)."""
    while True:
        signum = signal.sigwait(_SIGNALS)
        if signum in _STOPPED_BY:
            print(f"Shutdown initiated via {_STOPPED_BY[signum]}.", flush=True)
            return 0
        for pid, index in list(workers.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if not done:
                continue
            del workers[pid]
            code = os.waitstatus_to_exitcode(status)
            if code == 0:
                print(f"{PROG}: worker {index} was stopped; stopping the others", file=sys.stderr, flush=True)
                return 0
            how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
            print(f"{PROG}: worker {index} (pid {pid}) {how}; stopping the super peer", file=sys.stderr, flush=True)
            return 1


def _stop(workers: dict[int, int]) -> None:
    """SIGTERM every worker; SIGKILL those still running after :data:`STOP_TIMEOUT_S`; reap all."""
    for pid in workers:
        _kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while workers and time.monotonic() < deadline:
        for pid in [pid for pid in workers if os.waitpid(pid, os.WNOHANG)[0]]:
            del workers[pid]
        if workers:
            signal.sigtimedwait({signal.SIGCHLD}, 0.1)
    for pid in workers:
        _kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    workers.clear()


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
