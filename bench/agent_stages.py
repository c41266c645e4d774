"""Where a ping through two agents spends its time, stage by stage, from the agents' syscalls.

Usage (root, ``perf`` installed)::

    python3 bench/agent_stages.py                                         # this tree, 1000 pings
    python3 bench/agent_stages.py --pings 2000 --interval 0.05 --env DRASYL_EVENT_LOOP=asyncio
    python3 bench/agent_stages.py --env PYTHONPATH=/tmp/main-tree         # another tree (agents run with -P)

One pair of agents in agent_latency.py's lab. While a pings b ``--pings`` times every
``--interval`` s, ``perf trace`` records both agents' TUN and UDP syscalls (with timestamps and
durations); each ping is then cut into the stages it crossed:

    a: TUN read → send (a's Python: policy, arm)
    a's send → b's recvmmsg (the send syscall delivers through the kernel, b wakes up)
    b: recvmmsg → TUN write (disarm, policy)
    b: TUN write (the kernel answers the echo inside it)  →  TUN read of the reply
    b: TUN read → send (arm)
    b's send → a's recvmmsg
    a: recvmmsg → TUN write

and the median and 90th percentile of each stage are printed, with the round trip they add
up to. ``perf trace`` costs some µs per syscall, so the sum is a little above ping's RTT.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from agent_latency import Lab, concurrent_pings, start_lab  # noqa: E402

# "  12.345 ( 0.012 ms): python3/1234 write(fd: 7</dev/net/tun>, buf: 0x…, count: 84) = 84"; a call
# another thread's output interrupts is printed as its start "(          ): … sendto(fd: …) ..." and
# later "( 0.110 ms): python3/1234  ... [continued]: sendto()) = 1"
_LINE = re.compile(r"^\s*([0-9.]+) \(\s*([0-9.]*)(?: ms)?\s*\): \S+/(\d+) (\w+)\(fd: (\d+)(?:<[^>]*>)?.*?(?:= (-?\d+).*)?$")
_CONTINUED = re.compile(r"^\s*([0-9.]+) \(\s*([0-9.]+) ms\): \S+/(\d+)\s+\.\.\. \[continued\]: (\w+)\(\)\)\s+= (-?\d+)")
STAGES = ("a: TUN read → send (a's Python: policy, arm)", "a's send → b's recvmmsg (the kernel delivers, b wakes)",
          "b: recvmmsg → TUN write (disarm, policy)", "b: TUN write (the kernel answers the echo in it)",
          "b: → TUN read of the reply", "b: TUN read → send (policy, arm)",
          "b's send → a's recvmmsg (the kernel delivers, a wakes)", "a: recvmmsg → TUN write (disarm, policy)")
SENDS = ("sendto", "sendmmsg", "sendmsg")


def fd_kinds(pid: int) -> dict[int, str]:
    """The process's file descriptors that are the TUN device ("tun") or a socket ("udp")."""
    kinds = {}
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target == "/dev/net/tun" or target.startswith("socket:"):
            kinds[int(fd.name)] = "tun" if target == "/dev/net/tun" else "udp"
    return kinds


def events(path: Path, pids: dict[int, str]) -> list[tuple[float, float, str, str, str, int]]:
    """(start ms, duration ms, agent, syscall, tun|udp, result) of each completed traced call,
    in order of start."""
    kinds = {pid: fd_kinds(pid) for pid in pids}
    out = []
    pending: dict[tuple[int, str], tuple[float, str]] = {}
    for line in path.read_text(errors="replace").splitlines():
        if (m := _CONTINUED.match(line)) is not None:
            pid, call = int(m.group(3)), m.group(4)
            started = pending.pop((pid, call), None)
            if started is not None and pid in pids:
                out.append((started[0], float(m.group(2)), pids[pid], call, started[1], int(m.group(5))))
            continue
        m = _LINE.match(line)
        if m is None or int(m.group(3)) not in pids:
            continue
        pid, call = int(m.group(3)), m.group(4)
        target = kinds[pid].get(int(m.group(5)))
        if target is None:
            continue
        if not m.group(2) or m.group(6) is None:
            pending[(pid, call)] = (float(m.group(1)), target)
        else:
            out.append((float(m.group(1)), float(m.group(2)), pids[pid], call, target, int(m.group(6))))
    out.sort()
    return out


def stages(evs: list[tuple[float, float, str, str, str, int]]) -> list[list[float]]:
    """Per ping, the µs of each of :data:`STAGES` (pings with a missing step are skipped)."""
    pings = []
    i, n = 0, len(evs)

    def find(start: int, agent: str, calls: tuple[str, ...], target: str) -> int:
        for j in range(start, min(n, start + 12)):
            t = evs[j]
            if t[2] == agent and t[3] in calls and t[4] == target and t[5] > 0:
                return j
        return -1

    while i < n:
        ev = evs[i]
        if not (ev[2] == "a" and ev[3] == "read" and ev[4] == "tun" and ev[5] > 0):
            i += 1
            continue
        steps = [i]
        for agent, calls, target in (("a", SENDS, "udp"), ("b", ("recvmmsg", "recvfrom"), "udp"),
                                     ("b", ("write",), "tun"), ("b", ("read",), "tun"), ("b", SENDS, "udp"),
                                     ("a", ("recvmmsg", "recvfrom"), "udp"), ("a", ("write",), "tun")):
            j = find(steps[-1] + 1, agent, calls, target)
            if j < 0:
                break
            steps.append(j)
        if len(steps) == 8:
            (a_read, a_send, b_recv, b_write, b_read, b_send, a_recv, a_write) = (evs[k] for k in steps)
            end = lambda e: e[0] + e[1]  # noqa: E731
            ms = [a_send[0] - end(a_read), b_recv[0] - a_send[0], b_write[0] - end(b_recv), b_write[1],
                  b_read[0] - end(b_write), b_send[0] - end(b_read), a_recv[0] - b_send[0],
                  a_write[0] - end(a_recv)]
            pings.append([x * 1000 for x in ms])
            i = steps[-1] + 1
        else:
            i += 1
    return pings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pings", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--env", action="append", default=[], help="VAR=VALUE for both agents (repeatable)")
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    with Lab() as lab, tempfile.TemporaryDirectory() as tmp:
        td = Path(tmp)
        pair = start_lab(lab, td, [env])[0]
        trace = td / "trace.txt"
        pids = {pair.procs[0].pid: "a", pair.procs[1].pid: "b"}
        perf = subprocess.Popen(["perf", "trace", "-o", str(trace), "-p", ",".join(map(str, pids)),
                                 "-e", "read,write,sendto,sendmmsg,sendmsg,recvmmsg,recvfrom"],
                                stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # perf attaches asynchronously; nothing to wait on but its start-up
        rtts = concurrent_pings([(pair.a, pair.b_overlay)], args.pings, args.interval)[0]
        perf.terminate()
        perf.wait(30)
        pings = stages(events(trace, pids))
        if not pings:
            shutil.copy(trace, "/tmp/agent_stages.trace")
    if not pings:
        raise SystemExit("no complete ping found in the trace (perf trace output in /tmp/agent_stages.trace)")
    print(f"{len(pings)} of {args.pings} pings traced completely; ping's RTT median {statistics.median(rtts):.3f} ms "
          f"(with perf trace attached)\n")
    print("| stage | median µs | p90 µs |")
    print("|---|---:|---:|")
    columns = list(zip(*pings))
    for name, col in zip(STAGES, columns):
        q = statistics.quantiles(col, n=10)
        print(f"| {name} | {statistics.median(col):.0f} | {q[-1]:.0f} |")
    print(f"| **sum** | **{statistics.median([sum(p) for p in pings]):.0f}** | |")


if __name__ == "__main__":
    main()
