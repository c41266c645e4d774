"""The real drasyl-rs binaries for the interop tests: where they are and how they run.

``drasyl-sp`` (drasyl-rs' super peer) and ``node`` (its example node) are looked up in
``$DRASYL_RS_BIN`` or ``<repo>/../shared/drasyl-rs/``. Without them a test is skipped with a
reason that says where to put them; under ``CI=true`` it fails instead, so that CI cannot pass
by skipping.

What these helpers encode about the binaries (found by running them):

- ``drasyl-sp`` prints a URL only for a non-loopback address: its namespace needs an
  interface with an address; a specific listen address prints exactly that URL.
- ``0.0.0.0`` and ``[::]`` on one port fail to bind, so the listeners of the other address
  family are set empty (:func:`listen_env`; our super peer reads the same variables).
- ``node`` binds only RFC 1918 and global interface addresses unless ``DRASYL_UDP_ADDRS``
  names them; on the documentation ranges of our labs it would have no UDP socket at all.
  So it is always given its address.
- ``node`` prompts (``Enter recipient public key [..]: ``) without a newline, so a received
  message may be printed on the same line after a prompt: match it anywhere in the line.
- ``node`` busy-loops (sending empty messages) once stdin ends: stdin stays open and it is
  stopped by signal (``eof_stops=False``).
- Both log to stdout (tracing); ``NO_COLOR`` keeps the lines plain.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path

import pytest
from netns import REPO, Lab, Process

BIN_ENV = "DRASYL_RS_BIN"
DEFAULT_DIR = REPO.parent / "shared" / "drasyl-rs"
NAMES = ("drasyl-sp", "node")
START_S = 10.0  # first output of a binary


def binary_dir() -> Path:
    """The directory holding ``drasyl-sp`` and ``node``; skips the test without them (fails
    under ``CI=true``)."""
    configured = os.environ.get(BIN_ENV)
    directory = Path(configured) if configured else DEFAULT_DIR
    missing = [name for name in NAMES if not os.access(directory / name, os.X_OK)]
    if missing:
        reason = (f"drasyl-rs binaries not found: {', '.join(missing)} missing in {directory}; put "
                  f"drasyl-rs' super peer (drasyl-sp) and example node (node) there, or set "
                  f"{BIN_ENV} to a directory holding both")
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: the interop tests must run)", pytrace=False)
        pytest.skip(reason)
    return directory


def listen_env(udp: str, tcp: str) -> dict[str, str]:
    """``DRASYL_{UDP,TCP}{4,6}_LISTEN`` for one address family, the other family's empty.

    ``udp`` and ``tcp`` are ``host:port`` with IPv6 hosts bracketed."""
    family = "6" if udp.startswith("[") else "4"
    other = "4" if family == "6" else "6"
    return {f"DRASYL_UDP{family}_LISTEN": udp, f"DRASYL_TCP{family}_LISTEN": tcp,
            f"DRASYL_UDP{other}_LISTEN": "", f"DRASYL_TCP{other}_LISTEN": ""}


def url_host(ip: str) -> str:
    """``ip`` as it appears before ``:port`` (IPv6 bracketed)."""
    return f"[{ip}]" if ipaddress.ip_address(ip).version == 6 else ip


def host_port(ip: str, port: int) -> str:
    return f"{url_host(ip)}:{port}"


def start_super_peer(lab: Lab, ns: str, directory: Path, identity_file: str, udp: str, tcp: str,
                     **env: str) -> tuple[Process, str]:
    """drasyl-rs' super peer in ``ns`` (more settings in ``env``); returns it and the URL it printed."""
    env = {"DRASYL_IDENTITY_FILE": identity_file, "RUST_LOG": "info", "NO_COLOR": "1", **listen_env(udp, tcp), **env}
    proc = lab.start(ns, [str(directory / "drasyl-sp")], "drasyl-sp (drasyl-rs)", env)
    proc.wait_for_line(r"^Super peer listening on:$", START_S)
    return proc, proc.wait_for_line(r"^  (udp://\S+)$", START_S).match.group(1)


def start_node(lab: Lab, ns: str, directory: Path, identity_file: str, super_peer_url: str,
               udp_addr: str, name: str) -> Process:
    """drasyl-rs' example node in ``ns``, bound to ``udp_addr`` only, logging at debug level
    (it then logs every APP it sends directly and every APP it receives, with addresses)."""
    env = {"DRASYL_IDENTITY_FILE": identity_file, "DRASYL_SUPER_PEERS": super_peer_url,
           "DRASYL_UDP_ADDRS": udp_addr, "RUST_LOG": "debug", "NO_COLOR": "1"}
    return lab.start(ns, [str(directory / "node")], name, env, eof_stops=False)


def send(node: Process, recipient_pk: str, text: str) -> None:
    """Make the example node send ``text`` (one line, no leading or trailing blanks)."""
    node.write(recipient_pk, text)


def received(sender_pk: str, tag: str) -> str:
    """Regex of the example node's line for a received message whose first word is ``tag``."""
    return rf"{sender_pk}: {re.escape(tag)}( \S.*)? \(\d+ bytes\)$"
