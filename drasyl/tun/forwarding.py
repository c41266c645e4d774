"""IPv4 forwarding for the prefixes this node serves as a gateway, and nothing else (agent.md §4).

A node named as ``gw`` of a route forwards between the overlay and the route's destination,
but only when its user consented in config.toml; the daemon computes the set of destination
prefixes this host serves (already filtered by consent) and :meth:`Forwarding.apply` makes the
kernel forward exactly that. An empty set leaves the host as it was.

For a non-empty set, one nftables table of ours (``table inet drasyl_agent``) with a
forward-hook chain is loaded *before* ``net.ipv4.ip_forward`` is switched on:

* from the TUN device, only to the served prefixes (members cannot reach the host's LAN,
  other VPNs or the internet through us unless the prefix is served);
* into the TUN device, only replies (established/related): nothing new enters the overlay;
* if ``ip_forward`` was 0 before, every other IPv4 packet that would be forwarded is dropped:
  switching it on for the overlay must not turn the host into a router between its other
  interfaces. If it was 1 already, someone else routes here and other traffic is left alone.

Why not just ``ip_forward=1``: it forwards for every interface with no filter, and stayed on
after exit. Now the previous value is saved to ``<state_dir>/ip_forward`` before the first
change and restored on :meth:`Forwarding.close`; the file outlives a crash, so the next start's
:meth:`Forwarding.recover` restores the value and deletes the table the crashed run left.

Limits, on purpose: nftables evaluates every table's forward chain, so our drops are final but
our accepts do not override another table's drop (a host firewall still has the last word).
No NAT is added: the served LAN must route the overlay subnet back to this gateway, or the admin
adds a masquerade rule. IPv6 prefixes (a route's ``dest6``) are served the same way: a set
``served6`` in the same table, and ``net.ipv6.conf.all.forwarding`` switched on, saved to
``<state_dir>/ip6_forward`` and restored like ``ip_forward`` (only when an IPv6 prefix is served;
note that the kernel then ignores router advertisements on interfaces with ``accept_ra`` 1, so
a gateway that configures its own IPv6 by SLAAC needs ``accept_ra`` 2 there). Everything
here — the sysctl, the table — belongs to the network namespace of the calling thread. The
``nft`` command is used (``nft -f -``, one atomic transaction per change); without it, a
non-empty set is refused and ``ip_forward`` stays as it is (fail closed). Failures are returned
as messages, never raised.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from ipaddress import IPv4Network, IPv6Network, collapse_addresses
from ..files import write_atomic

IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"
IP6_FORWARD = "/proc/sys/net/ipv6/conf/all/forwarding"
STATE_DIR = "/run/drasyl"
TABLE = "drasyl_agent"
NFT_TIMEOUT = 10.0


class Forwarding:
    """IPv4 (and IPv6) forwarding from the TUN device to the prefixes this host serves as a gateway."""

    def __init__(self, device: str = "drasyl", state_dir: str = STATE_DIR,
                 ip_forward_path: str = IP_FORWARD, table: str = TABLE, ip6_forward_path: str = IP6_FORWARD) -> None:
        self.device = device
        self.state_dir = state_dir
        self.state_path = os.path.join(state_dir, "ip_forward")
        self.ip_forward_path = ip_forward_path
        self.state6_path = os.path.join(state_dir, "ip6_forward")
        self.ip6_forward_path = ip6_forward_path
        self._previous6: str | None = None  # IPv6 forwarding before we switched it on; None: untouched
        self.table = table
        self._previous: str | None = None  # ip_forward before we switched it on; None: untouched
        self._served: frozenset[IPv4Network] = frozenset()  # what the kernel has now

    def recover(self) -> list[str]:
        """At start: restore the ``ip_forward`` a crashed run saved, then delete its table."""
        previous, problems = self._read_state(self.state_path)
        if problems:
            return problems
        problems = [] if previous is None else self._write_sysctl(self.ip_forward_path, previous)
        problems += self._recover6()
        if shutil.which("nft"):
            problems += self._delete_table()
        if problems or previous is None:
            return problems
        return self._remove(self.state_path)

    def _recover6(self) -> list[str]:
        """The IPv6 part of :meth:`recover`: restore and forget a saved IPv6 forwarding value."""
        previous, problems = self._read_state(self.state6_path)
        if problems or previous is None:
            return problems
        return self._write_sysctl(self.ip6_forward_path, previous) or self._remove(self.state6_path)

    def apply(self, served: frozenset[IPv4Network | IPv6Network]) -> list[str]:
        """Forward from the device to ``served`` only (empty: not at all, ``ip_forward`` as it
        was); no-op when ``served`` is what was applied last."""
        if not served:
            return self.close()
        if served == self._served:
            return []
        if shutil.which("nft") is None:
            return ["forwarding refused: nft not found"]
        if self._previous is None:
            previous, problems = self._saved(self.state_path, self.ip_forward_path, "ip_forward")
            if problems:
                return problems
            self._previous = previous
        served6 = frozenset(p for p in served if p.version == 6)
        if served6 and self._previous6 is None:
            previous6, problems = self._saved(self.state6_path, self.ip6_forward_path, self.ip6_forward_path)
            if problems:
                return problems
            self._previous6 = previous6
        problems = self._nft(self._ruleset(served))
        if problems:
            return problems
        problems = self._write_sysctl(self.ip_forward_path, "1")
        if self._previous6 is not None:
            problems += self._write_sysctl(self.ip6_forward_path, "1" if served6 else self._previous6)
        if not problems:
            self._served = served
        return problems

    def close(self) -> list[str]:
        """Restore the previous ``ip_forward``, delete our table and the state file."""
        if self._previous is None:
            return []
        problems = self._write_sysctl(self.ip_forward_path, self._previous)  # first: no unfiltered moment
        if self._previous6 is not None:
            problems += self._write_sysctl(self.ip6_forward_path, self._previous6)
        problems += self._delete_table()
        if problems:
            return problems
        self._previous = None
        self._served = frozenset()
        if self._previous6 is not None:
            self._previous6 = None
            problems = self._remove(self.state6_path)
        return problems + self._remove(self.state_path)

    # --- the ruleset ------------------------------------------------------------------------

    def _ruleset(self, served: frozenset[IPv4Network | IPv6Network]) -> str:
        """Replace our table in one transaction: create it if missing, delete, define anew."""
        served4 = [p for p in served if p.version == 4]
        served6 = [p for p in served if p.version == 6]
        others = "meta nfproto ipv4 drop" if self._previous == "0" else ""
        if self._previous6 == "0":
            others += "\n    meta nfproto ipv6 drop"
        dev = f'"{self.device}"'
        sets, accepts = "", ""
        for name, kind, match, prefixes in (("served", "ipv4_addr", "ip", served4),
                                            ("served6", "ipv6_addr", "ip6", served6)):
            if prefixes:  # no overlaps in a set; an empty set is not written
                elements = ", ".join(str(p) for p in collapse_addresses(prefixes))
                sets += f"  set {name} {{ type {kind}; flags interval; elements = {{ {elements} }}; }}\n"
                accepts += f"    iifname {dev} {match} daddr @{name} accept\n"
        return (f"table inet {self.table}\n"
                f"delete table inet {self.table}\n"
                f"table inet {self.table} {{\n"
                f"{sets}"
                f"  chain forward {{\n"
                f"    type filter hook forward priority filter; policy accept;\n"
                f"{accepts}"
                f"    iifname {dev} drop\n"
                f"    oifname {dev} ct state established,related accept\n"
                f"    oifname {dev} drop\n"
                f"    {others}\n"
                f"  }}\n"
                f"}}\n")

    def _delete_table(self) -> list[str]:
        return self._nft(f"table inet {self.table}\ndelete table inet {self.table}\n")

    @staticmethod
    def _nft(ruleset: str) -> list[str]:
        try:
            result = subprocess.run(["nft", "-f", "-"], input=ruleset, capture_output=True, text=True,
                                    timeout=NFT_TIMEOUT)
        except FileNotFoundError:
            return ["forwarding: nft not found"]
        except (OSError, subprocess.TimeoutExpired) as exc:
            return [f"forwarding: nft failed: {exc}"]
        if result.returncode != 0:
            return [f"forwarding: nft failed ({result.returncode}): {result.stderr.strip()}"]
        return []

    # --- ip_forward and its saved value -----------------------------------------------------

    def _saved(self, state_path: str, sysctl_path: str, name: str) -> tuple[str | None, list[str]]:
        """The sysctl's value before our first change, and problems: the value in its state
        file when that is there (recover failed: it holds the older, true value), else the
        sysctl's, written to the state file first (atomically) so a crash cannot lose it."""
        try:
            with open(state_path) as saved:
                return saved.read().strip(), []
        except FileNotFoundError:
            pass
        except OSError as exc:
            return None, [f"forwarding refused: cannot read {state_path}: {exc.strerror}"]
        try:
            with open(sysctl_path) as sysctl:
                previous = sysctl.read().strip()
            os.makedirs(self.state_dir, mode=0o755, exist_ok=True)
            write_atomic(state_path, (previous + "\n").encode(), mode=0o644)
        except OSError as exc:
            return None, [f"forwarding refused: cannot save {name} to {state_path}: {exc.strerror}"]
        return previous, []

    @staticmethod
    def _read_state(path: str) -> tuple[str | None, list[str]]:
        """A saved sysctl value (None: no state file) and problems."""
        try:
            with open(path) as saved:
                return saved.read().strip(), []
        except FileNotFoundError:
            return None, []
        except OSError as exc:
            return None, [f"forwarding: cannot read {path}: {exc.strerror}"]

    @staticmethod
    def _write_sysctl(path: str, value: str) -> list[str]:
        try:
            with open(path, "w") as sysctl:
                sysctl.write(value + "\n")
        except OSError as exc:
            return [f"forwarding: cannot write {value} to {path}: {exc.strerror}"]
        return []

    @staticmethod
    def _remove(path: str) -> list[str]:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            return [f"forwarding: cannot remove {path}: {exc.strerror}"]
        return []

