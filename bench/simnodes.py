"""Simulated nodes for the benchmarks: cheap identities and pre-armed packets.

Difficulty-0 identities (the super peer under test runs with DRASYL_MIN_POW_DIFFICULTY=0)
and packets built once, so the load generator spends its CPU on sending, not on crypto.
"""

from __future__ import annotations

import os
import time

import nacl.bindings as sodium

from drasyl.crypto import session_keys
from drasyl.identity import Identity, search_pow
from drasyl.messages import APP, HELLO, HelloSuperPeer, encode_endpoints, encode_message


def cheap_identity() -> Identity:
    """A random identity with a difficulty-0 proof of work (the first candidate)."""
    pk, sk = sodium.crypto_sign_seed_keypair(os.urandom(32))
    return Identity(sk, search_pow(pk, 0))


def hello_for(node: Identity, sp_public_key: bytes, endpoint: tuple[str, int], network_id: int = 1) -> bytes:
    """An armed HELLO from ``node`` to the super peer, stamped now (valid for hello_max_age)."""
    _, tx = session_keys(node, sp_public_key)
    body = HelloSuperPeer(time.time_ns() // 1000, 1, encode_endpoints([endpoint])).encode()
    return encode_message(HELLO, network_id, sp_public_key, node.public_key, node.proof_of_work, body, tx)


def app_for(sender: Identity, recipient: Identity, payload: bytes, network_id: int = 1) -> bytes:
    """An armed long-header APP, end-to-end encrypted as a real node would send it."""
    _, tx = session_keys(sender, recipient.public_key)
    return encode_message(APP, network_id, recipient.public_key, sender.public_key,
                          sender.proof_of_work, payload, tx)
