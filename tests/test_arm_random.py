"""The random R of armed bodies comes from a pool: it must still never repeat, also across fork."""

from __future__ import annotations

import os

from drasyl import crypto

KEY = bytes(range(32))
AD = b"\x01\x02\x03\x04"


def r_of_next_arm() -> bytes:
    return bytes(crypto.arm(b"x", KEY, AD)[: crypto.RANDOM_LEN])


def test_r_differs_across_pool_refills() -> None:
    seen = {r_of_next_arm() for _ in range(3 * crypto.RANDOM_POOL // crypto.RANDOM_LEN)}
    assert len(seen) == 3 * crypto.RANDOM_POOL // crypto.RANDOM_LEN


def test_forked_child_does_not_reuse_the_parents_pool() -> None:
    r_of_next_arm()  # the pool is filled and partly used
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report its next R and leave without running pytest's teardown
        os.write(write, r_of_next_arm())
        os._exit(0)
    os.close(write)
    child_r = os.read(read, crypto.RANDOM_LEN)
    os.close(read)
    assert os.waitpid(pid, 0)[1] == 0
    assert len(child_r) == crypto.RANDOM_LEN
    assert child_r != r_of_next_arm(), "child and parent armed with the same R"
