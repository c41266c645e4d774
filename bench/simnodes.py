"""Simulated nodes for the benchmarks: cheap identities and pre-armed packets.

Difficulty-0 identities (the super peer under test runs with DRASYL_MIN_POW_DIFFICULTY=0)
and packets built once, so the load generator spends its CPU on sending, not on crypto.
Session keys are cached per (node, peer): re-stamping 20 000 HELLOs for a new rate step then
costs one AEGIS call each, not an X25519 key exchange.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import nacl.bindings as sodium

from drasyl.crypto import session_keys
from drasyl.identity import Identity, search_pow
from drasyl.messages import APP, HELLO, HelloSuperPeer, encode_endpoints, encode_message

ROOT = Path(__file__).resolve().parents[1]
_tx_keys: dict[tuple[bytes, bytes], bytes] = {}


def cheap_identity() -> Identity:
    """A random identity with a difficulty-0 proof of work (the first candidate)."""
    pk, sk = sodium.crypto_sign_seed_keypair(os.urandom(32))
    return Identity(sk, search_pow(pk, 0))


def vector_identity(name: str = "id_1") -> Identity:
    """A real identity (valid difficulty-24 proof) from the test vectors: a super peer
    identity both implementations accept without running a proof of work here."""
    for path in (ROOT / "tests" / "vectors" / "derived.json", ROOT.parents[1] / "shared" / "vectors" / "derived.json",
                 ROOT.parent / "shared" / "vectors" / "derived.json"):
        if path.exists():
            v = json.loads(path.read_text())["identities"][name]
            return Identity.from_hex(v["secret_key_hex"], v["proof_of_work"])
    raise FileNotFoundError("derived.json not found in tests/vectors/ or ../shared/vectors/")


def tx_key(node: Identity, peer_public_key: bytes) -> bytes:
    key = (node.public_key, peer_public_key)
    tx = _tx_keys.get(key)
    if tx is None:
        tx = _tx_keys[key] = session_keys(node, peer_public_key)[1]
    return tx


def hello_for(node: Identity, sp_public_key: bytes, endpoint: tuple[str, int], network_id: int = 1) -> bytes:
    """An armed HELLO from ``node`` to the super peer, stamped now (valid for hello_max_age)."""
    body = HelloSuperPeer(time.time_ns() // 1000, 1, encode_endpoints([endpoint])).encode()
    return bytes(encode_message(HELLO, network_id, sp_public_key, node.public_key, node.proof_of_work, body,
                                tx_key(node, sp_public_key)))


def app_for(sender: Identity, recipient: Identity, payload: bytes, network_id: int = 1) -> bytes:
    """An armed long-header APP, end-to-end encrypted as a real node would send it."""
    return bytes(encode_message(APP, network_id, recipient.public_key, sender.public_key,
                                sender.proof_of_work, payload, tx_key(sender, recipient.public_key)))
