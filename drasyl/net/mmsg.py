"""Batched UDP syscalls: ``recvmmsg``/``sendmmsg`` through cffi (ABI mode, libc, no compiler).

Python's socket module makes one ``recvfrom`` and one ``sendto`` per datagram; a super peer
answering a HELLO pays two syscalls, and the syscall entry, argument parsing and address
conversion show up in its CPU per packet. ``recvmmsg`` fills up to a whole batch of
preallocated buffers in one call, ``sendmmsg`` sends an outbox to many destinations in one.

Everything the kernel reads or writes is allocated once per socket and reused: the
``mmsghdr`` array, the iovecs, one receive slot of :data:`SLOT` bytes per message and the
sockaddr storage. Header fields are read and written through integer views of that memory
(not cffi attribute access), so per datagram Python does a few index operations.

The costly part is the address: the core keys peers on the ``(host, port[, flowinfo,
scope_id])`` tuples that ``recvfrom`` returns. :class:`AddressCache` maps raw sockaddr bytes
to that tuple and back, bounded (cleared when full), so a busy peer's address is converted
once, and the tuple the core stores is the very object the next datagram yields.

:func:`available` is false where libc lacks the functions (not Linux) or cffi is missing (it
comes with PyNaCl); then :mod:`drasyl.net.udp` keeps its one-syscall-per-datagram path.
Measured in bench/README.md ("Batched UDP syscalls"): 0.5–1.2 µs less CPU per packet.
"""

from __future__ import annotations

import errno
import socket
import struct
from typing import Any, Callable

from ..transmit import Address

SLOT = 2048  # > drasyl's 1472-byte MTU; a longer datagram comes back with MSG_TRUNC
MSG_TRUNC = 0x20  # linux/socket.h
CACHE_LIMIT = 1 << 16  # addresses kept per socket before the cache starts over
SEND_BATCH = 64  # datagrams per sendmmsg: the syscall is amortised long before 512
_FULL = (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS)  # send buffer full

_CDEF = """
struct iovec { void *iov_base; size_t iov_len; };
struct msghdr {
    void *msg_name; uint32_t msg_namelen;
    struct iovec *msg_iov; size_t msg_iovlen;
    void *msg_control; size_t msg_controllen;
    int msg_flags;
};
struct mmsghdr { struct msghdr msg_hdr; unsigned int msg_len; };
int recvmmsg(int fd, struct mmsghdr *msgvec, unsigned int vlen, int flags, void *timeout);
int sendmmsg(int fd, struct mmsghdr *msgvec, unsigned int vlen, int flags);
"""


def _load() -> tuple[Any, Any] | None:
    try:
        from cffi import FFI

        ffi = FFI()
        ffi.cdef(_CDEF)
        lib = ffi.dlopen(None)
        lib.recvmmsg, lib.sendmmsg  # noqa: B018 - resolve now: missing symbols mean no batching
    except Exception:  # no cffi, no libc symbol (not Linux/glibc/musl)
        return None
    return ffi, lib


_LIB = _load()
if _LIB is not None:  # where the kernel's fields sit, in 32-bit words of an mmsghdr
    _ffi = _LIB[0]
    _NULL = _ffi.NULL
    _MMSG_WORDS = _ffi.sizeof("struct mmsghdr") // 4
    _MSG_LEN_WORD = _ffi.offsetof("struct mmsghdr", "msg_len") // 4
    _LEN_TO_FLAGS = _MSG_LEN_WORD - _ffi.offsetof("struct msghdr", "msg_flags") // 4


def available() -> bool:
    return _LIB is not None


class AddressCache:
    """Raw sockaddr bytes ↔ the address tuple ``recvfrom`` would return, for one family."""

    def __init__(self, family: int) -> None:
        self.family = family
        self.size = 16 if family == socket.AF_INET else 28
        self._tuples: dict[bytes, Address] = {}
        self.raws: dict[Address, bytes] = {}

    def tuple_of(self, raw: bytes) -> Address:
        addr = self._tuples.get(raw)
        if addr is None:
            if len(self._tuples) >= CACHE_LIMIT:
                self._tuples.clear()
                self.raws.clear()
            addr = self._decode(raw)
            self._tuples[raw] = addr
            self.raws[addr] = raw
        return addr

    def raw_of(self, addr: Address) -> bytes | None:
        """The sockaddr for ``addr``, or None where only the socket module can resolve it."""
        raw = self.raws.get(addr)
        if raw is None:
            raw = self._encode(addr)
            if raw is not None:
                if len(self.raws) >= CACHE_LIMIT:
                    self._tuples.clear()
                    self.raws.clear()
                self.raws[addr] = raw
        return raw

    def _decode(self, raw: bytes) -> Address:
        port = raw[2] << 8 | raw[3]
        if self.family == socket.AF_INET:
            return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
        flowinfo, scope_id = struct.unpack_from(">I", raw, 4)[0], struct.unpack_from("=I", raw, 24)[0]
        host = socket.inet_ntop(socket.AF_INET6, raw[8:24])
        if scope_id:  # as getnameinfo(NI_NUMERICHOST) in recvfrom: fe80::1%eth0
            try:
                host += "%" + socket.if_indextoname(scope_id)
            except OSError:
                host += "%" + str(scope_id)
        return host, port, flowinfo, scope_id

    def _encode(self, addr: Address) -> bytes | None:
        try:
            host, port = addr[0], addr[1]
            if self.family == socket.AF_INET:
                return struct.pack("=H", socket.AF_INET) + struct.pack(">H", port) \
                    + socket.inet_pton(socket.AF_INET, host) + bytes(8)
            if "%" in host:
                return None  # scoped names: left to the socket module
            flowinfo = addr[2] if len(addr) > 2 else 0
            scope_id = addr[3] if len(addr) > 3 else 0
            return struct.pack("=H", socket.AF_INET6) + struct.pack(">HI", port, flowinfo) \
                + socket.inet_pton(socket.AF_INET6, host) + struct.pack("=I", scope_id)
        except (OSError, TypeError, ValueError, IndexError, struct.error):
            return None  # not a numeric address of this family: the plain send decides


class Batcher:
    """One socket's preallocated ``mmsghdr`` arrays; ``receive`` and ``send`` batches."""

    def __init__(self, sock: socket.socket, capacity: int) -> None:
        assert _LIB is not None
        ffi, lib = _LIB
        self._lib = lib
        self._fd = sock.fileno()
        self.addresses = AddressCache(sock.family)
        raw = ffi.new_allocator(should_clear_after_alloc=False)  # pages resident only once used
        namesize = self.addresses.size
        self._namesize = namesize
        self._rx = _Ring(ffi, raw, capacity, namesize)
        self._tx = _Ring(ffi, raw, min(capacity, SEND_BATCH), namesize)

    def receive(self) -> tuple[list[tuple[bytes, Address]], int]:
        """Datagrams ready now (up to ``capacity``) and how many came truncated (dropped).

        A socket error (an ICMP error such as port unreachable, reported once) reads as an
        empty batch: the datagram that caused it is gone, and the next wake-up reads on.
        """
        rx = self._rx
        n = self._lib.recvmmsg(self._fd, rx.msgs, rx.capacity, 0, _NULL)
        if n <= 0:
            return [], 0
        words, data, names = rx.words, rx.data, rx.names
        tuple_of = self.addresses.tuple_of
        size = self._namesize
        packets = []
        append = packets.append
        truncated = 0
        w = _MSG_LEN_WORD
        off = 0
        name = 0
        for _ in range(n):
            length = words[w]
            if length == SLOT and words[w - _LEN_TO_FLAGS] & MSG_TRUNC:
                truncated += 1
            else:
                append((data[off:off + length], tuple_of(names[name:name + size])))
            w += _MMSG_WORDS
            off += SLOT
            name += size
        return packets, truncated

    def send(self, batch: list[tuple[bytes | bytearray, Address]], fallback: Callable[[Any, Address], Any]) -> int:
        """Send ``(data, address)`` pairs with as few ``sendmmsg`` calls as fit; returns drops.

        A datagram whose address is not a numeric one of this socket's family, or that is
        longer than :data:`SLOT`, goes to ``fallback`` (the plain send) in its place in order.
        """
        tx = self._tx
        data, names, iov_lens = tx.data, tx.names, tx.iov_lens
        raws = self.addresses.raws
        raw_of = self.addresses.raw_of
        size = self._namesize
        capacity = tx.capacity
        drops = 0
        count = off = name = 0
        for payload, addr in batch:
            raw = raws.get(addr)
            if raw is None:
                raw = raw_of(addr)
            length = len(payload)
            if raw is None or length > SLOT:
                if count:
                    drops += self._flush(count)
                    count = off = name = 0
                fallback(payload, addr)
                continue
            data[off:off + length] = payload
            iov_lens[count * 2 + 1] = length
            names[name:name + size] = raw
            count += 1
            off += SLOT
            name += size
            if count == capacity:
                drops += self._flush(count)
                count = off = name = 0
        if count:
            drops += self._flush(count)
        return drops

    def _flush(self, count: int) -> int:
        """sendmmsg the first ``count`` prepared messages; returns those dropped.

        A partial send continues with the rest; a datagram the kernel refuses (unreachable,
        bad address) is skipped and counted; a full buffer drops what is left (UDP).
        """
        msgs = self._tx.msgs
        sendmmsg = self._lib.sendmmsg
        fd = self._fd
        drops = 0
        sent = 0
        while sent < count:
            n = sendmmsg(fd, msgs + sent, count - sent, 0)
            if n > 0:
                sent += n
                continue
            err = _ffi.errno
            if err == errno.EINTR:
                continue
            if err in _FULL:
                return drops + count - sent
            drops += 1  # this datagram's own error: skip it
            sent += 1
        return drops


class _Ring:
    """``capacity`` mmsghdrs, each with one iovec into its own SLOT and its own sockaddr."""

    def __init__(self, ffi: Any, alloc: Any, capacity: int, namesize: int) -> None:
        self.capacity = capacity
        self.msgs = alloc("struct mmsghdr[]", capacity)
        self.iovs = alloc("struct iovec[]", capacity)
        self._buf = alloc("char[]", capacity * SLOT)
        self._names = alloc("char[]", capacity * namesize)
        for i in range(capacity):
            iov = self.iovs[i]
            iov.iov_base = self._buf + i * SLOT
            iov.iov_len = SLOT
            hdr = self.msgs[i].msg_hdr
            hdr.msg_name = self._names + i * namesize
            hdr.msg_namelen = namesize  # recvmmsg writes back the same: one family per socket
            hdr.msg_iov = self.iovs + i
            hdr.msg_iovlen = 1
            hdr.msg_control = ffi.NULL
            hdr.msg_controllen = 0
            hdr.msg_flags = 0
        self.words = memoryview(ffi.buffer(self.msgs)).cast("I")  # 32-bit words of the headers
        self.iov_lens = memoryview(ffi.buffer(self.iovs)).cast("N")  # [base, len] per iovec
        self.data = ffi.buffer(self._buf)  # slicing gives bytes; slice assignment copies in
        self.names = ffi.buffer(self._names)

