"""``python -m drasyl.node``: a small interactive node, a mirror of drasyl-rs' example node.

It prints ``I am <public key>``, then reads pairs of lines from stdin (a recipient public
key, then a message) and sends each message; every received message is printed as
``<sender public key>: <text> (<n> bytes)``. At end of input it waits briefly for queued
messages to go out and exits. Configuration comes from the same environment variables as
the Rust example, so the two can be tried against each other.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading

from .. import eventloop
from ..env import env_str, log_level
from ..errors import DrasylError
from ..identity import load_or_generate
from ..urls import parse_super_peers
from .api import Node, node_config_from_env, udp_from_env

#: drasyl-rs' default public super peers (spec §9).
DEFAULT_SUPER_PEERS = " ".join(
    f"udp://sp-{name}.drasyl.org:22527?publicKey={pk}&networkId=1&tcpPort=8443"
    for name, pk in (
        ("rjl1", "5b4578909bf0ad3565bb5faf843a9f68b325dd87451f6cb747e49d82f6ce5f4c"),
        ("nyc1", "bf3572dba7ebb6c5ccd037f3a978707b5d7c5a9b9b01b56b4b9bf059af56a4e0"),
        ("sgp1", "ab7a1654d463f9986530bed00569cc895697827b802153b8ef1598579713045f"),
    )
)

HELP = f"""usage: python -m drasyl.node

An interactive drasyl node. It prints "I am <public key>", then reads a recipient public
key line and a message line from stdin, again and again, and sends each message. Received
messages are printed as "<sender public key>: <text> (<n> bytes)". It exits at end of input.

Environment (defaults in brackets):
  DRASYL_IDENTITY_FILE        identity file, created if missing [node.identity]
  DRASYL_SUPER_PEERS          space-separated super peer URLs [drasyl.org's public ones]
  DRASYL_UDP_PORT             UDP port for all sockets [derived from the public key]
  DRASYL_UDP_ADDRS            space-separated local IPs to bind [all usable interfaces]
  DRASYL_ARM_MESSAGES         encrypt messages (true/false) [true]
  DRASYL_MIN_POW_DIFFICULTY   proof of work for new identities and peers [24]
  DRASYL_MAX_PEERS            peer table size, 0 = unlimited [8192]
  DRASYL_HELLO_TIMEOUT        ms without answer before a path is stale [30000]
  DRASYL_HELLO_MAX_AGE        ms a HELLO/ACK may be old [60000]
  DRASYL_HOUSEKEEPING_INTERVAL  ms between HELLOs to super peers [5000]
  DRASYL_PROCESS_UNITES       hole punching on UNITE (true/false) [true]
  DRASYL_ENFORCE_TCP          always use TCP to super peers (true/false) [false]
  DRASYL_LOG_LEVEL            error, warn, info, debug, off; or RUST_LOG [warn]
  DRASYL_EVENT_LOOP           auto, uvloop or asyncio [auto: uvloop where installed]

Default super peers: {DEFAULT_SUPER_PEERS}
"""


def _progress(tried: int, expected: int) -> None:
    print(f"\rproof of work: {min(99, 100 * tried // expected)}% of expected tries", end="", file=sys.stderr)


async def _run() -> int:
    config = node_config_from_env()
    super_peers = parse_super_peers(env_str("DRASYL_SUPER_PEERS", DEFAULT_SUPER_PEERS))
    port, addrs = udp_from_env()
    path = env_str("DRASYL_IDENTITY_FILE", "node.identity")
    identity = load_or_generate(
        path, config.min_pow_difficulty,
        on_generate=lambda p: print(f"Identity file '{p}' not found. Generate new one...", file=sys.stderr),
        progress=_progress,
    )
    node = await Node.start(identity, super_peers, udp_port=port, udp_addrs=addrs, config=config)
    print(f"I am {identity.public_key_hex}", flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    printer = asyncio.create_task(_print_received(node))
    reader = asyncio.create_task(_read_and_send(node))
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if reader.done() and reader.exception() is None:
        await node.flush(timeout=10.0)  # messages still waiting for a super peer
    for task in (printer, reader, stopper):
        task.cancel()
    await node.close()
    return 0


def stdin_lines() -> asyncio.Queue[str]:
    """Lines of stdin ("" at EOF) from a daemon thread: a blocked read never delays exit."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str] = asyncio.Queue()

    def pump() -> None:
        while True:
            line = sys.stdin.readline()
            loop.call_soon_threadsafe(queue.put_nowait, line)
            if not line:
                return

    threading.Thread(target=pump, name="stdin", daemon=True).start()
    return queue


async def _read_and_send(node: Node) -> None:
    lines = stdin_lines()
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("Recipient: ", end="", file=sys.stderr, flush=True)
        recipient = await lines.get()
        if not recipient:
            return
        if interactive:
            print("Message: ", end="", file=sys.stderr, flush=True)
        message = await lines.get()
        if not message:
            return
        try:
            await node.send(recipient.strip(), message.rstrip("\n").encode())
        except DrasylError as exc:
            print(f"cannot send: {exc}", file=sys.stderr, flush=True)


async def _print_received(node: Node) -> None:
    while True:
        for sender, payload in await node.recv_batch():
            text = payload.decode("utf-8", errors="replace")
            print(f"{sender.hex()}: {text} ({len(payload)} bytes)", flush=True)


def main() -> int:
    if any(arg in ("-h", "--help") for arg in sys.argv[1:]):
        print(HELP, end="")
        return 0
    if len(sys.argv) > 1:
        print(f"unknown argument {sys.argv[1]!r}; see --help", file=sys.stderr)
        return 2
    try:
        level = log_level(os.environ, default=logging.WARNING)
        logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return eventloop.run(_run())
    except DrasylError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
