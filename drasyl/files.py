"""Atomic writes for the files a daemon must never leave half-written or lose.

An identity is a node's address, config.toml holds it too, and /etc/hosts is shared with the
whole host: each is written to a temporary file in the same directory, fsynced, and renamed
over the target (or linked into place when the target must not exist yet), then the directory
is fsynced. A crash leaves either the old file or the new one, never a mix. No other I/O here.
"""

from __future__ import annotations

import os
import tempfile


def write_atomic(path: str | os.PathLike[str], data: bytes, *, exclusive: bool = False, mode: int = 0o600,
                 private: bool = False) -> str:
    """Put ``data`` at ``path`` atomically; returns the path of the file written.

    ``exclusive``: never replace an existing file (``FileExistsError``, nothing changed).
    A replaced file keeps its mode and owner; a new one gets ``mode`` (not narrowed by the
    umask). ``private``: the result is never group/other-accessible (a secret goes in). A symlink is followed: its target is replaced and the link stays. Other failures
    raise ``OSError``; the temporary file is always removed.
    """
    target = os.path.realpath(path)
    directory, name = os.path.split(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        try:
            st = None if exclusive else _stat(target)
            os.fchmod(fd, (mode if st is None else st.st_mode & 0o7777) & (0o7700 if private else 0o7777))
            if st is not None and os.geteuid() == 0:
                os.fchown(fd, st.st_uid, st.st_gid)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if exclusive:
            os.link(tmp, target)  # atomic, and fails if the file appeared meanwhile
        else:
            os.replace(tmp, target)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    return target


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
