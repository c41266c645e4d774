"""Names of overlay peers in the hosts file (agent.md §5, Linux hosts-file mode).

Every line containing ``# managed by drasyl`` belongs to us; a rewrite keeps all other lines
as they are and appends one line per (ip, hostname), in drasyl-rs' exact format, so files
written by either implementation are cleaned by the other. IPv6 addresses get lines of their
own in the same format (after the IPv4 lines), so a name resolves to both. Lines are ordered by address so
that an unchanged set of names leaves the file untouched (nothing is written then).

Writing is atomic where it can be (:func:`drasyl.files.write_atomic`): a temporary file in the
same directory with the original mode and owner, fsynced, then renamed over the file (over its
target if it is a symlink, which stays). When the rename is impossible —
a bind-mounted hosts file (Docker, ``ip netns exec`` with ``/etc/netns/<ns>/hosts``) answers
``EBUSY`` — or the directory is not writable, the file is rewritten in place instead
(drasyl-rs gives up there [quirk]); a reader may then briefly see a partial file. The path is
a parameter so that tests never touch the machine's ``/etc/hosts``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv6Address

from ..files import write_atomic
from .device import TunError

log = logging.getLogger("drasyl.tun")

HOSTS = "/etc/hosts"
MARKER = "# managed by drasyl"
DOMAIN = "drasyl.network"
_FORBIDDEN = frozenset(" \t\r\n#")


def host_line(ip: IPv4Address | IPv6Address, hostname: str) -> str:
    return f"{str(ip):<15} {hostname} {hostname}.{DOMAIN}   {MARKER}"


def render(text: str, entries: Iterable[tuple[IPv4Address, str]]) -> str:
    """``text`` without our lines, plus one line per entry (sorted by address, then name).

    A hostname that would break the line (whitespace, ``#``) raises ValueError: network
    configs validate names as DNS labels, so this only guards the file's syntax.
    """
    lines = [line for line in text.splitlines() if MARKER not in line]
    for ip, hostname in sorted(entries, key=_by_address):
        if not hostname or _FORBIDDEN.intersection(hostname):
            raise ValueError(f"hostname {hostname!r} cannot be written to a hosts file")
        lines.append(host_line(ip, hostname))
    return "".join(line + "\n" for line in lines)


def _by_address(entry: tuple[IPv4Address | IPv6Address, str]) -> tuple[int, int, str]:
    return entry[0].version, int(entry[0]), entry[1]  # ints compare in C: a network may name 16 384 peers


class HostsFile:
    """The hosts file at ``path`` with our block of names."""

    def __init__(self, path: str = HOSTS) -> None:
        self.path = path

    def write(self, entries: Iterable[tuple[IPv4Address, str]]) -> bool:
        """Make our block list exactly ``entries``; True if the file changed."""
        try:
            with open(self.path, encoding="utf-8") as f:
                old = f.read()
        except FileNotFoundError:
            old = ""
        except (OSError, UnicodeDecodeError) as exc:
            raise TunError(f"cannot read {self.path}: {exc}") from None
        new = render(old, entries)
        if new == old:
            return False
        try:
            self._replace(new)
        except OSError as atomic:
            try:
                self._rewrite_in_place(new)
            except OSError as exc:
                raise TunError(f"cannot write {self.path}: {exc.strerror} "
                               f"(atomic replace failed too: {atomic.strerror})") from None
            log.debug("%s rewritten in place (atomic replace failed: %s)", self.path, atomic.strerror)
        return True

    def foreign_names(self) -> frozenset[str]:
        """Names the file gives that are not ours (lower case): a network may not take them over."""
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return frozenset()
        except OSError as exc:
            raise TunError(f"cannot read {self.path}: {exc.strerror}") from None
        return frozenset(name.lower() for line in lines if MARKER not in line
                         for name in line.partition("#")[0].split()[1:])

    def clear(self) -> bool:
        """Remove our block (at shutdown, and at start after a crash)."""
        return self.write(())

    def _replace(self, text: str) -> None:
        # a new file gets the usual 0644; a symlinked hosts file stays a symlink
        write_atomic(self.path, text.encode("utf-8"), mode=0o644)

    def _rewrite_in_place(self, text: str) -> None:
        with open(self.path, "r+", encoding="utf-8") as f:
            f.write(text)
            f.truncate()
            f.flush()
            os.fsync(f.fileno())
