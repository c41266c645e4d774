"""The agent's optional C data path (issue 14): TUN ⇄ UDP for established peers without the interpreter.

A ping through two agents spent ~60 % of its tunnel overhead in Python between syscalls (two
arms, two disarms, four policy checks; bench/README.md "Tunnel latency"). When
:mod:`drasyl.agent._fast` was built (setup.py) and ``DRASYL_NATIVE`` allows it
(:mod:`drasyl.native`), :class:`FastPath` lets C do the per-packet work of the common case:

- TUN → UDP: an IPv4 packet whose (destination, source) are a /32 × /32 entry of the policy
  tables (:meth:`~drasyl.agent.policy.PolicyTables.host_pairs`), towards a peer with a direct
  path and a short id, is armed as a short-header APP and sent from the path's socket;
- UDP → TUN: a datagram whose short id names a peer, that disarms, fits the MTU, is IPv4 and
  passes the /32 anti-spoofing entry, is written to the TUN (a reply to ``drasyl-agent ping``
  is not: :mod:`.ping` takes it off in Python).

Everything else — IPv6, routed subnets, denied packets, relayed or long-header traffic,
HELLOs, a peer without a direct path, anything C is unsure of — goes to the Python code
unchanged and in order: at the first packet of a burst C does not take, the rest of the burst
is Python's. Peer state stays in the Python objects (C reads ``best``, ``tx_short_id`` and the
keys per packet and writes ``app_tx``/``app_rx``/``bytes_in``/``bytes_out``), drops go to the
same counters, so ``status``, metrics and the core's timers cannot tell the paths apart.
Same bytes on the wire (tests/test_agent_fast.py disarms what C armed with
:mod:`drasyl.crypto`, and the other way round). ``status`` shows what C carried (``native``).

The policy snapshot is refreshed whenever the agent adopts new tables or send handles
(:meth:`FastPath.set_tables`); the TUN whenever it is opened or closed. Unarmed nodes
(``DRASYL_ARM_MESSAGES=false``) keep the Python path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from .. import native
from ..net.faults import FaultLog

if TYPE_CHECKING:
    from ..node.api import Node
    from ..node.core import NodePeer
    from ..tun import TunDevice
    from .ping import Pinger
    from .policy import PolicyTables

MODULE = "drasyl.agent._fast"


class FastPath:
    """One agent's C engine, fed the agent's TUN, node, ping identity and policy snapshot.

    The event loop calls C directly: :attr:`tun_readable` is the TUN fd's reader, and the node's
    UDP sockets are read by the engine (:meth:`~drasyl.node.api.Node.set_intercept`), so the
    common packet costs no Python frame. C calls back into Python only for what it leaves:
    ``on_tun_rest(n)`` with the TUN packets left in the slots, :meth:`UdpSocket.deliver` with
    the datagrams left, and the counters of failures."""

    def __init__(self, module: Any, node: Node, pinger: Pinger, on_tun_rest: Callable[[int], None],
                 faults: FaultLog) -> None:
        """``on_tun_rest(n)``: the Python data path for ``tun.slots[:n]`` (``n`` may be 0 after a
        failed read: it then checks whether the device is gone)."""
        encrypt, decrypt = native.aegis_functions()
        self._node = node
        self._tun: TunDevice | None = None
        self._on_tun_rest = on_tun_rest
        self._faults = faults
        self._engine = module.Engine(encrypt, decrypt, node, node.core, self._tun_failed, self._tun_rest,
                                     self._fault, node.core.send_limit, pinger.ident, pinger.token)
        #: The TUN fd's reader (C): reads, sends what it takes, hands the rest to ``on_tun_rest``.
        self.tun_readable: Callable[[], None] = self._engine.tun_readable
        node.set_intercept(self._engine.udp_readable)

    @classmethod
    def start(cls, node: Node, pinger: Pinger, on_tun_rest: Callable[[int], None], faults: FaultLog,
              armed: bool) -> FastPath | None:
        """The C path when it was built and ``DRASYL_NATIVE`` allows it, and the node arms its
        messages; None: pure Python. ConfigError for ``DRASYL_NATIVE=on`` without the module."""
        module = native.load(MODULE)
        if module is None or not armed:
            return None
        return cls(module, node, pinger, on_tun_rest, faults)

    def close(self) -> None:
        """Hand everything back to Python (the node's sockets are read by the node again)."""
        self._node.set_intercept(None)
        self.set_tun(None)
        self._engine.set_tables([], [], [])

    def set_tun(self, tun: TunDevice | None) -> None:
        """The TUN device C reads and writes (queue 0 and its slots, as the Python path); None
        while there is none (closed, being recreated): then every packet is Python's."""
        self._tun = tun
        if tun is None:
            self._engine.set_tun(-1, 1, None, 0, None)
        else:
            queue = tun.queues[0]
            self._engine.set_tun(queue.fd, tun.mtu, queue.arena, queue.slot_size, queue.lengths)

    def set_tables(self, tables: PolicyTables, handles: dict[bytes, NodePeer]) -> None:
        """The /32 policy entries and the send handles the agent holds now. A TX entry without a
        handle is left out: Python counts that packet as ``tx_policy_denied``."""
        index: dict[bytes, int] = {}
        held: list[NodePeer] = []
        tx_pairs, rx_pairs = tables.host_pairs()
        tx = []
        for dst, src, pk in tx_pairs:
            handle = handles.get(pk)
            if handle is None:
                continue
            if pk not in index:
                index[pk] = len(held)
                held.append(handle)
            tx.append((dst, src, index[pk]))
        self._engine.set_tables(held, tx, rx_pairs)

    def stats(self) -> dict[str, int]:
        """``status`` ``native``: packets C sent and wrote, and its faults (unexpected errors:
        the packet went to Python, or a Python hook raised)."""
        return self._engine.stats()

    def _tun_rest(self, n: int, err: int, oversize: int) -> None:
        """What C left of a TUN burst: its failures counted as :meth:`TunQueue.read_batch` counts
        them, then the Python data path for the ``n`` packets in the slots."""
        tun = self._tun
        if tun is not None:
            if oversize:
                tun.drops["tun_oversize"] += oversize
            if err:
                tun.queues[0].failed("read", err)
        self._on_tun_rest(n)

    def _tun_failed(self, what: str, code: int) -> None:
        """C's TUN write failed: counted as the Python path counts it."""
        if self._tun is not None:
            self._tun.queues[0].failed(what, code)

    def _fault(self, exc: BaseException) -> None:
        """A Python hook C called raised: counted and logged (rate-limited) like the Python path's."""
        self._faults.report("in the native data path", exc)
