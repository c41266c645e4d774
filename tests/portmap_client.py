"""A LAN host's side of the port-mapping lab tests: ``python portmap_client.py PORT PROTOCOLS LIFETIME``.

Binds UDP ``PORT`` (the node's socket), runs a :class:`drasyl.portmap.PortMapper` for it and
answers every datagram with ``reply:<data>``. Prints one line per event: ``started <status
json>`` after the first attempt, ``mapping <json|null>`` from ``on_change``, ``received
<ip>:<port> <data>``, ``log <message>`` (the mapper's log, debug level, so renewals show).
Commands on stdin: ``status``; ``send IP PORT DATA`` (from the mapped socket); ``stop``
(prints ``stopped <status json>``); end of stdin stops and exits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sys
from dataclasses import asdict

from drasyl.portmap import Mapping, PortMapper, mapper


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.DatagramTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        print(f"received {addr[0]}:{addr[1]} {data.decode(errors='replace')}", flush=True)
        self.transport.sendto(b"reply:" + data, addr)


class Lines(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        print(f"log {record.getMessage()}", flush=True)


def changed(mapping: Mapping | None) -> None:
    print(f"mapping {json.dumps(asdict(mapping) if mapping else None)}", flush=True)


async def main() -> None:
    port, protocols, lifetime = int(sys.argv[1]), tuple(sys.argv[2].split(",")), int(sys.argv[3])
    mapper.MIN_RENEW_S = 1.0  # the lab grants lifetimes of seconds, to see renewals
    log = logging.getLogger("drasyl.portmap")
    log.setLevel(logging.DEBUG)
    log.addHandler(Lines())
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(Echo, local_addr=("0.0.0.0", port), family=socket.AF_INET)
    pm = PortMapper(port, protocols=protocols, lifetime_s=lifetime, on_change=changed, check_s=1.0)
    await pm.start()
    print(f"started {json.dumps(pm.status())}", flush=True)
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        words = line.split()
        if words == ["status"]:
            print(f"status {json.dumps(pm.status())}", flush=True)
        elif words[:1] == ["send"] and len(words) == 4:
            transport.sendto(words[3].encode(), (words[1], int(words[2])))
        elif words == ["stop"]:
            await pm.stop()
            print(f"stopped {json.dumps(pm.status())}", flush=True)
    await pm.stop()
    transport.close()


if __name__ == "__main__":
    asyncio.run(main())
