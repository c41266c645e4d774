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
from ..net.udp import UdpSocket
from ..transmit import Address

if TYPE_CHECKING:
    from ..node.api import Node
    from ..node.core import NodePeer
    from ..tun import TunDevice
    from .ping import Pinger
    from .policy import PolicyTables

MODULE = "drasyl.agent._fast"


class FastPath:
    """One agent's C engine, fed the agent's TUN, node, ping identity and policy snapshot."""

    def __init__(self, module: Any, node: Node, pinger: Pinger, on_written: Callable[[], None],
                 faults: FaultLog) -> None:
        """``on_written``: called after C wrote received packets to the TUN (the agent reads the
        TUN right away: a ping's reply is there already)."""
        encrypt, decrypt = native.aegis_functions()
        self._node = node
        self._tun: TunDevice | None = None
        self._on_written = on_written
        self._faults = faults
        self._engine = module.Engine(encrypt, decrypt, node, node.core, self._tun_failed,
                                     node.core.send_limit, pinger.ident, pinger.token)
        node.set_intercept(self.receive)

    @classmethod
    def start(cls, node: Node, pinger: Pinger, on_written: Callable[[], None], faults: FaultLog,
              armed: bool) -> FastPath | None:
        """The C path when it was built and ``DRASYL_NATIVE`` allows it, and the node arms its
        messages; None: pure Python. ConfigError for ``DRASYL_NATIVE=on`` without the module."""
        module = native.load(MODULE)
        if module is None or not armed:
            return None
        return cls(module, node, pinger, on_written, faults)

    def close(self) -> None:
        """Hand everything back to Python (the node's sockets are read by the node again)."""
        self._node.set_intercept(None)
        self.set_tun(None)
        self._engine.set_tables([], [], [])

    def set_tun(self, tun: TunDevice | None) -> None:
        """The TUN device C reads and writes (queue 0, as the Python path); None while there is
        none (closed, being recreated): then every packet is Python's."""
        self._tun = tun
        self._engine.set_tun(tun.fileno() if tun is not None else -1, tun.mtu if tun is not None else 1)

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

    def read_tun(self, tun: TunDevice) -> int:
        """What :meth:`TunDevice.read_batch` does, with C sending what it takes on the way: the
        number of packets left in ``tun.slots`` / ``tun.lengths`` for the Python path."""
        queue = tun.queues[0]
        n, err, oversize = self._engine.tun_to_udp(queue.arena, queue.slot_size, queue.lengths)
        if oversize:
            tun.drops["tun_oversize"] += oversize
        if err:
            queue.failed("read", err)
        return n

    def receive(self, sock: UdpSocket) -> list[tuple[bytes, Address]]:
        """The node sockets' :data:`~drasyl.net.udp.Intercept`: C receives the datagrams and
        writes those it takes to the TUN; the rest go to the node, in order."""
        try:
            taken, truncated, rest = self._engine.udp_to_tun(sock.sock.fileno(), sock.batcher.addresses.tuple_of)
            if truncated:
                sock.recv_truncated += truncated
            if taken:
                self._on_written()
        except Exception:  # a bug must not stop the receive path: counted, logged rate-limited
            self._faults.report("receiving datagrams (native path)")
            return []
        return rest or []

    def stats(self) -> dict[str, int]:
        """``status`` ``native``: packets C sent and wrote, and its faults (each such packet
        went to Python)."""
        return self._engine.stats()

    def _tun_failed(self, what: str, code: int) -> None:
        """C's TUN write failed: counted as the Python path counts it."""
        if self._tun is not None:
            self._tun.queues[0].failed(what, code)
