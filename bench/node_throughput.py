"""(d) Node to node on a direct path: 1345-byte APPs from one drasyl.Node to another over
loopback, one way; packets per second delivered.

A real drasyl-sp introduces the two nodes (each in its own process: the receiver in a child
process, the sender here); once the sender's path is direct (short-header APPs), the sender
offers 1345-byte payloads (the agent's TUN MTU) at increasing rates with ``send_many``
batches and the receiver counts what it got.

    python3 bench/node_throughput.py [--rates 20000,40000,60000,80000,100000] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simnodes import cheap_identity  # noqa: E402
from spprocess import SuperPeerProcess  # noqa: E402

from drasyl.identity import Identity  # noqa: E402
from drasyl.node import Node, NodeConfig  # noqa: E402

PAYLOAD = 1345
CONFIG = NodeConfig(min_pow_difficulty=0)


def receiver(sk: bytes, pow_: int, sp_url: str, conn) -> None:
    async def run() -> None:
        node = await Node.start(Identity(sk, pow_), [sp_url], udp_port=0, udp_addrs=["127.0.0.1"], config=CONFIG)
        conn.send("ready")
        count = 0
        loop = asyncio.get_running_loop()
        reader = loop.run_in_executor(None, conn.recv)
        while True:
            recv = asyncio.ensure_future(node.recv_batch(4096))
            done, _ = await asyncio.wait({recv, reader}, return_when=asyncio.FIRST_COMPLETED)
            if recv in done:
                count += len(recv.result())
            else:
                recv.cancel()
            if reader in done:
                cmd = reader.result()
                if cmd == "stop":
                    break
                conn.send(count)  # "count"
                reader = loop.run_in_executor(None, conn.recv)
        await node.close()

    asyncio.run(run())


async def sender(args, sp: SuperPeerProcess, a: Identity, b: Identity, conn) -> None:
    node = await Node.start(a, [sp.url], udp_port=0, udp_addrs=["127.0.0.1"], config=CONFIG)
    loop = asyncio.get_running_loop()

    async def delivered() -> int:
        conn.send("count")
        return await loop.run_in_executor(None, conn.recv)

    await node.send(b.public_key, b"warm-up")
    await node.wait_path(b.public_key, "direct", 10)
    peer = node.core.peers[b.public_key]
    deadline = time.monotonic() + 10
    while peer.tx_short_id is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    print(f"direct path, short header: {peer.tx_short_id is not None}", file=sys.stderr)
    payload = bytes(PAYLOAD)
    best = 0.0
    peak = 0.0
    for rate in (float(r) for r in args.rates.split(",")):
        before = await delivered()
        cpu0 = time.process_time()
        start = time.perf_counter()
        sent = 0
        while True:
            elapsed = time.perf_counter() - start
            if elapsed >= args.seconds:
                break
            due = int(rate * elapsed) - sent
            if due > 0:
                n = min(due, 256)
                node.send_many(b.public_key, [payload] * n)
                sent += n
            await asyncio.sleep(0 if due > 256 else 0.0005)
        await asyncio.sleep(0.5)
        got = await delivered() - before
        cpu = time.process_time() - cpu0
        ratio = got / sent if sent else 0.0
        pps = got / args.seconds
        peak = max(peak, pps)
        if ratio >= 0.99:
            best = max(best, pps)
        print(f"offered {rate:>8,.0f} pps: sent {sent:>8,} delivered {got:>8,} ({ratio:6.2%})"
              f" = {pps:>8,.0f} pps, {pps * PAYLOAD * 8 / 1e6:5.0f} Mbit/s; sender cpu {cpu / args.seconds:4.0%}"
              f"  {'ok' if ratio >= 0.99 else 'LOSS'}")
    print(f"RESULT node->node direct: {best:,.0f} pps with >= 99% delivery "
          f"({best * PAYLOAD * 8 / 1e6:,.0f} Mbit/s); peak delivered {peak:,.0f} pps")
    await node.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="20000,40000,60000,80000,100000")
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    sp_id, a, b = cheap_identity(), cheap_identity(), cheap_identity()
    sp = SuperPeerProcess(sp_id)
    parent, child = mp.Pipe()
    proc = mp.get_context("fork").Process(target=receiver, args=(b.secret_key, b.proof_of_work, sp.url, child))
    proc.start()
    try:
        if not parent.poll(20) or parent.recv() != "ready":
            raise RuntimeError("receiver node did not start")
        asyncio.run(sender(args, sp, a, b, parent))
    finally:
        parent.send("stop")
        proc.join(10)
        if proc.is_alive():
            proc.kill()
        sp.stop()


if __name__ == "__main__":
    main()
