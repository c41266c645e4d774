"""The hosts-file block: drasyl-rs' line format, other lines untouched, atomic or in-place writes.

Every test works on a file under ``tmp_path``; the machine's ``/etc/hosts`` is never opened.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from ipaddress import IPv4Address

import pytest

from drasyl.tun.hosts import HostsFile, render
from netns import python_env

USER_LINES = "127.0.0.1 localhost\n# a comment\n\n192.0.2.7 printer\n"
FILESERVER = (IPv4Address("10.1.0.2"), "fileserver")
ALICE = (IPv4Address("10.1.0.1"), "laptop-alice")


def test_lines_have_drasyl_rs_format_sorted_by_address():
    assert render("", [FILESERVER, ALICE]) == (
        "10.1.0.1        laptop-alice laptop-alice.drasyl.network   # managed by drasyl\n"
        "10.1.0.2        fileserver fileserver.drasyl.network   # managed by drasyl\n")


def test_our_lines_are_replaced_and_all_others_kept(tmp_path):
    path = tmp_path / "hosts"
    path.write_text(USER_LINES)
    hosts = HostsFile(str(path))
    assert hosts.write([ALICE, FILESERVER])
    assert path.read_text() == USER_LINES + render("", [ALICE, FILESERVER])
    path.write_text(path.read_text() + "10.9.9.9 added-by-user\n")
    assert hosts.write([FILESERVER])
    assert path.read_text() == USER_LINES + "10.9.9.9 added-by-user\n" + render("", [FILESERVER])
    assert hosts.clear()
    assert path.read_text() == USER_LINES + "10.9.9.9 added-by-user\n"


def test_an_unchanged_block_is_not_rewritten(tmp_path):
    path = tmp_path / "hosts"
    path.write_text(USER_LINES)
    hosts = HostsFile(str(path))
    hosts.write([ALICE])
    inode = path.stat().st_ino
    assert not hosts.write([ALICE])
    assert path.stat().st_ino == inode


def test_lines_left_by_a_crash_or_by_drasyl_rs_are_removed_at_start(tmp_path):
    path = tmp_path / "hosts"
    path.write_text("10.1.0.5        old old.drasyl.network   # managed by drasyl\n" + USER_LINES)
    assert HostsFile(str(path)).clear()
    assert path.read_text() == USER_LINES


def test_the_replace_is_atomic_and_keeps_mode_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "hosts"
    path.write_text(USER_LINES)
    path.chmod(0o644)
    inode = path.stat().st_ino
    old_umask = os.umask(0o077)
    try:
        HostsFile(str(path)).write([ALICE])
    finally:
        os.umask(old_umask)
    assert path.stat().st_ino != inode  # a new file renamed over the old one
    assert path.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hosts"]


def test_a_symlinked_hosts_file_stays_a_symlink(tmp_path):
    real = tmp_path / "real-hosts"
    real.write_text(USER_LINES)
    link = tmp_path / "hosts"
    link.symlink_to(real)
    assert HostsFile(str(link)).write([ALICE])
    assert link.is_symlink() and real.read_text() == USER_LINES + render("", [ALICE])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hosts", "real-hosts"]


def test_a_missing_file_is_created_only_when_there_are_names(tmp_path):
    path = tmp_path / "hosts"
    hosts = HostsFile(str(path))
    assert not hosts.clear() and not path.exists()
    assert hosts.write([ALICE]) and path.read_text() == render("", [ALICE])


def test_a_hostname_that_would_break_the_file_is_refused(tmp_path):
    path = tmp_path / "hosts"
    path.write_text(USER_LINES)
    with pytest.raises(ValueError, match="cannot be written"):
        HostsFile(str(path)).write([(IPv4Address("10.1.0.3"), "evil\n1.2.3.4 bank")])
    assert path.read_text() == USER_LINES


@pytest.mark.netns
def test_a_bind_mounted_hosts_file_is_rewritten_in_place(tmp_path):
    """As in Docker or under ``ip netns exec``: rename over a mount point fails with EBUSY."""
    if os.geteuid() != 0:
        pytest.fail("needs root (deselect with -m 'not netns')", pytrace=False)
    source, target = tmp_path / "source", tmp_path / "hosts"
    source.write_text(USER_LINES)
    target.write_text("")
    script = textwrap.dedent(f"""
        import errno, os, subprocess
        from ipaddress import IPv4Address
        from drasyl.tun.hosts import HostsFile
        subprocess.run(["mount", "--bind", {str(source)!r}, {str(target)!r}], check=True)
        try:
            os.rename({str(source)!r}, {str(target)!r})
        except OSError as exc:
            assert exc.errno == errno.EBUSY, exc
        else:
            raise AssertionError("rename over a bind mount worked: nothing to test")
        assert HostsFile({str(target)!r}).write([(IPv4Address("10.1.0.1"), "laptop-alice")])
        print("written")
    """)
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c", script],
                            capture_output=True, text=True, env=python_env(), timeout=30)
    assert result.returncode == 0 and "written" in result.stdout, result.stderr
    # The private mount is gone with the process; the write went through it into the source.
    assert source.read_text() == USER_LINES + render("", [ALICE])
    assert target.read_text() == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hosts", "source"]
