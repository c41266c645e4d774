"""One TCP transfer with a checksum, for tests that send data across a TUN in namespaces.

``tcp_check.py sink IP PORT TIMEOUT``: listen, print ``listening``, accept one connection,
read to EOF, print ``received <bytes> <sha256 hex>``.
``tcp_check.py send IP PORT BYTES TIMEOUT``: connect, send that many random bytes, close,
print ``sent <bytes> <sha256 hex>``. Both give up after TIMEOUT s (exit 1 with the reason).
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys

CHUNK = 65536


def sink(ip: str, port: int, timeout: float) -> None:
    with socket.create_server((ip, port)) as server:
        server.settimeout(timeout)
        print("listening", flush=True)
        conn, _ = server.accept()
        with conn:
            conn.settimeout(timeout)
            digest, total = hashlib.sha256(), 0
            while chunk := conn.recv(CHUNK):
                digest.update(chunk)
                total += len(chunk)
    print(f"received {total} {digest.hexdigest()}", flush=True)


def send(ip: str, port: int, nbytes: int, timeout: float) -> None:
    data = os.urandom(nbytes)
    with socket.create_connection((ip, port), timeout=timeout) as conn:
        conn.sendall(data)
    print(f"sent {nbytes} {hashlib.sha256(data).hexdigest()}", flush=True)


def main(argv: list[str]) -> int:
    try:
        if argv[:1] == ["sink"]:
            sink(argv[1], int(argv[2]), float(argv[3]))
        elif argv[:1] == ["send"]:
            send(argv[1], int(argv[2]), int(argv[3]), float(argv[4]))
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
