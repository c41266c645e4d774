"""ns per policy lookup of the agent's data path (PolicyTables.egress / ingress_ok).

Builds one network with --peers nodes (full mesh) and a routed /24 behind a gateway, then
times egress and ingress lookups for a peer's /32 and for an address in the routed subnet.
Prints the median of --rounds rounds of --n lookups each (the "(empty call)" line is the loop and call overhead included in each).

    python3 bench/agent_policy.py [--peers 1000] [--n 200000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from ipaddress import IPv4Address
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drasyl.agent.netconfig import parse_network_config  # noqa: E402
from drasyl.agent.policy import PolicyTables, desired_state  # noqa: E402


def network_toml(peers: int) -> str:
    lines = ['network = "10.0.0.0/16"']
    for i in range(1, peers + 1):
        lines += ["[[node]]", f'pk = "{i:064x}"', f'ip = "{IPv4Address(0x0A000000 + i)}"',
                  f'hostname = "n{i}"', 'groups = ["all"]']
    lines += ["[[route]]", 'dest = "192.168.50.0/24"', f'gw = "{2:064x}"',
              "[[policy]]", 'source_groups = ["all"]', 'destination_groups = ["all"]']
    return "\n".join(lines)


def per_call_ns(fn, args: tuple, n: int) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(n):
        fn(*args)
    return (time.perf_counter_ns() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", type=int, default=1000)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    cfg = parse_network_config(network_toml(args.peers), "bench")
    me = (1).to_bytes(32, "big")
    peer = (3).to_bytes(32, "big")
    gw = (2).to_bytes(32, "big")
    tables = PolicyTables({"bench": desired_state(cfg, me)})
    my_ip, peer_ip, lan_ip = 0x0A000001, 0x0A000003, 0xC0A83207
    assert tables.egress(my_ip, peer_ip) == peer and tables.egress(my_ip, lan_ip) == gw
    assert tables.ingress_ok(peer, peer_ip, my_ip) and tables.ingress_ok(gw, lan_ip, my_ip)
    assert not tables.ingress_ok(peer, lan_ip, my_ip)
    cases = {
        "egress  /32   ": (tables.egress, (my_ip, peer_ip)),
        "egress  routed": (tables.egress, (my_ip, lan_ip)),
        "ingress /32   ": (tables.ingress_ok, (peer, peer_ip, my_ip)),
        "ingress routed": (tables.ingress_ok, (gw, lan_ip, my_ip)),
        "egress  miss  ": (tables.egress, (my_ip, 0x08080808)),
        "(empty call)  ": (lambda *_: None, (my_ip, peer_ip)),
    }
    print(f"{args.peers} peers, median of {args.rounds} rounds x {args.n} lookups")
    for name, (fn, fargs) in cases.items():
        ns = statistics.median(per_call_ns(fn, fargs, args.n) for _ in range(args.rounds))
        print(f"{name}  {ns:6.0f} ns")


if __name__ == "__main__":
    main()
