"""Session keys and arming (AEGIS-256X2) exactly as drasyl-rs puts them on the wire.

Arming (spec §3.3) turns a plaintext body into ``R(32) ‖ tag(16) ‖ ciphertext``. drasyl-rs
passes its arguments to AEGIS swapped: the 32 random bytes ``R`` sent in clear are the AEGIS
*key*, and the secret session key is the AEGIS *nonce*. We reproduce that swap because it is
what is on the wire; the tag still depends on the secret session key, but this is not how
AEGIS is meant to be used, so nothing new should be built on it.

libaegis is called directly through the ``aeg`` package's cffi module: the wrapper
functions cost ~6 µs per call, the direct call ~1 µs, and this is the data path. Arming
writes into the caller's packet buffer and reads the associated data (the header already
written in front of the body) from there too, so a packet costs one buffer and no copies.
The random ``R`` comes from a pool of ``os.urandom`` bytes refilled every 128 packets (one
``getrandom`` syscall per packet was a quarter of an ACK's arming cost); a forked child
drops the pool it inherited, so two processes never send the same ``R``. That pool is the
module's only state; it does no other I/O.
"""

from __future__ import annotations

import os

import nacl.bindings as sodium
from aeg._loader import ffi, lib  # aeg's own cffi binding of libaegis

from .errors import CryptoError, DisarmError
from .identity import Identity

RANDOM_LEN = 32
TAG_LEN = 16
ARM_OVERHEAD = RANDOM_LEN + TAG_LEN  # 48

RANDOM_POOL = 128 * RANDOM_LEN

_encrypt = lib.aegis256x2_encrypt_detached
_decrypt = lib.aegis256x2_decrypt_detached
_from_buffer = ffi.from_buffer
_urandom = os.urandom


_pool = b""
_pool_at = 0


def _forget_random_pool() -> None:
    global _pool, _pool_at
    _pool, _pool_at = b"", 0


os.register_at_fork(after_in_child=_forget_random_pool)


def _random() -> bytes:
    """32 fresh random bytes (the next unused slice of the pool)."""
    global _pool, _pool_at
    at = _pool_at
    if at >= len(_pool):
        _pool = _urandom(RANDOM_POOL)
        at = 0
    _pool_at = at + RANDOM_LEN
    return _pool[at : at + RANDOM_LEN]


def _c(buf: bytes | bytearray | memoryview) -> bytes | object:
    """A C argument for ``buf``: cffi takes ``bytes`` as they are, and ``bytearray`` or
    ``memoryview`` (receive buffers, or a body that :func:`disarm` returned) only through a
    buffer view; passed directly they raise ``TypeError``. No copy either way."""
    return buf if type(buf) is bytes else _from_buffer(buf)


def x25519_public_key(ed25519_public_key: bytes) -> bytes:
    """Birational map of an Ed25519 public key; fails for keys that do not decompress."""
    try:
        return sodium.crypto_sign_ed25519_pk_to_curve25519(ed25519_public_key)
    except Exception:  # pynacl raises its own RuntimeError/ValueError types
        raise CryptoError("public key is not a valid Ed25519 point") from None


def session_keys(identity: Identity, peer_public_key: bytes) -> tuple[bytes, bytes]:
    """``(rx, tx)`` for talking to ``peer_public_key``: libsodium crypto_kx (spec §3.2).

    The side with the smaller X25519 public key (memcmp order) is the kx client.
    """
    my_pk = identity.x25519_public_key
    peer_pk = x25519_public_key(peer_public_key)
    if my_pk == peer_pk:
        raise CryptoError("no session with oneself")
    try:
        if my_pk < peer_pk:
            return sodium.crypto_kx_client_session_keys(my_pk, identity.x25519_secret_key, peer_pk)
        return sodium.crypto_kx_server_session_keys(my_pk, identity.x25519_secret_key, peer_pk)
    except Exception:  # an all-zero shared secret (low-order point)
        raise CryptoError("key exchange failed (non-contributory public key)") from None


def arm(body: bytes, tx_key: bytes, ad: bytes, random: bytes | None = None) -> bytearray:
    """``R ‖ tag ‖ ciphertext`` of ``body``; ``random`` fixes R (test vectors only)."""
    n = len(ad)
    out = bytearray(n + ARM_OVERHEAD + len(body))
    out[:n] = ad
    arm_into(out, n, body, tx_key, 0, random)
    del out[:n]
    return out


def arm_into(out: bytearray, offset: int, body: bytes, tx_key: bytes, ad_start: int,
             random: bytes | None = None) -> None:
    """Arm ``body`` into ``out[offset : offset + 48 + len(body)]`` with the associated data
    ``out[ad_start : offset]``: a message's header, written in front of its armed body."""
    out[offset : offset + RANDOM_LEN] = _random() if random is None else random
    p = _from_buffer(out)
    r = p + offset
    # key = R and nonce = session key: the swap of spec §3.3
    _encrypt(r + ARM_OVERHEAD, r + RANDOM_LEN, TAG_LEN, _c(body), len(body), p + ad_start, offset - ad_start,
             tx_key, r)


def disarm(data: bytes, body_offset: int, ad: bytes, rx_key: bytes) -> bytearray:
    """Open the armed body that starts at ``data[body_offset]`` (no copies of the input)."""
    return _disarm(data, body_offset, _c(ad), len(ad), rx_key)


def disarm_after_header(data: bytes, ad_start: int, body_offset: int, rx_key: bytes) -> bytearray:
    """:func:`disarm` with the associated data ``data[ad_start : body_offset]``: the header
    in front of the body, read in place."""
    return _disarm(data, body_offset, None, ad_start, rx_key)


def _disarm(data: bytes, body_offset: int, ad, ad_len: int, rx_key: bytes) -> bytearray:
    """``ad`` None: the AD is ``data[ad_len : body_offset]`` (``ad_len`` is then its start)."""
    n = len(data) - body_offset - ARM_OVERHEAD
    if n < 0:
        raise DisarmError("armed body shorter than 48 bytes")
    out = bytearray(n)
    p = _from_buffer(data)
    if ad is None:
        ad, ad_len = p + ad_len, body_offset - ad_len
    r = p + body_offset
    # key = R (in clear, at r) and nonce = session key: the swap of spec §3.3
    if _decrypt(_from_buffer(out), r + ARM_OVERHEAD, n, r + RANDOM_LEN, TAG_LEN, ad, ad_len, rx_key, r):
        raise DisarmError("armed body failed authentication")
    return out


class Scratch:
    """Preallocated buffers and C pointers for a hot path that disarms and arms small
    long-header messages (a super peer's HELLO → ACK): no buffer, no cffi pointer object and
    no copy beyond one ``memcpy`` in and one out per message.

    :meth:`open_long` copies the datagram into a fixed buffer whose pointers (AD, R, tag,
    ciphertext) were computed once, and disarms into :attr:`plain`. :meth:`seal_long` arms
    ``plain[:n]`` (e.g. the first 8 bytes of the HELLO just opened: an ACK's body) behind the
    79-byte header the caller wrote to ``out[:79]`` (once, and per message only what changes)
    and returns a copy of the message. Same bytes as
    :func:`disarm_after_header` and :func:`arm_into`; one instance per thread.
    """

    __slots__ = ("size", "_in", "_plain", "plain", "_out", "_in_r", "_in_tag", "_in_ct", "_in_ad",
                 "_out_r", "_out_tag", "_out_ct", "_out_ad", "_plain_p", "out")

    #: Header length and AD start of a long header (as in :mod:`drasyl.messages`).
    HEADER = 79
    AD_START = 5

    def __init__(self, size: int = 2048) -> None:
        self.size = size
        self._in = bytearray(size)
        self.plain = bytearray(size)
        self._out = self.out = bytearray(size)
        h, a = self.HEADER, self.AD_START
        pin, pplain, pout = _from_buffer(self._in), _from_buffer(self.plain), _from_buffer(self._out)
        self._plain_p = pplain
        self._in_ad, self._in_r = pin + a, pin + h
        self._in_tag, self._in_ct = pin + h + RANDOM_LEN, pin + h + ARM_OVERHEAD
        self._out_ad, self._out_r = pout + a, pout + h
        self._out_tag, self._out_ct = pout + h + RANDOM_LEN, pout + h + ARM_OVERHEAD

    def open_long(self, data: bytes, rx_key: bytes) -> int:
        """Disarm the body of a long-header message into :attr:`plain`; returns its length.

        DisarmError as :func:`disarm_after_header`; a message longer than ``size`` goes
        through that function (and is copied into :attr:`plain` if it fits there)."""
        size = len(data)
        n = size - self.HEADER - ARM_OVERHEAD
        if n < 0:
            raise DisarmError("armed body shorter than 48 bytes")
        if size > self.size:
            body = disarm_after_header(data, self.AD_START, self.HEADER, rx_key)
            n = min(n, self.size)
            self.plain[:n] = body[:n]
            return n
        self._in[:size] = data
        if _decrypt(self._plain_p, self._in_ct, n, self._in_tag, TAG_LEN, self._in_ad, self.HEADER - self.AD_START,
                    rx_key, self._in_r):
            raise DisarmError("armed body failed authentication")
        return n

    def seal_long(self, n: int, tx_key: bytes) -> bytearray:
        """``out[:79] ‖ R ‖ tag ‖ ciphertext`` of ``plain[:n]`` (``n`` ≤ size − 127)."""
        global _pool, _pool_at
        out = self._out
        at = _pool_at
        if at >= len(_pool):
            _pool = _urandom(RANDOM_POOL)
            at = 0
        _pool_at = at + RANDOM_LEN
        out[self.HEADER:self.HEADER + RANDOM_LEN] = _pool[at:at + RANDOM_LEN]
        _encrypt(self._out_ct, self._out_tag, TAG_LEN, self._plain_p, n, self._out_ad, self.HEADER - self.AD_START,
                 tx_key, self._out_r)
        return out[:self.HEADER + ARM_OVERHEAD + n]
