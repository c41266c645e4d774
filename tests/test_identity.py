"""Identity: proof-of-work search and the ``[Identity]`` file (spec §2.2, §2.3).

The public key is the node's address, so the file rules matter more than they look: a file
that exists is never replaced, whatever is wrong with it, and every failure is an
``IdentityError`` that names the file (and the line, where the parser knows it).
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import nacl.bindings as sodium
import pytest

from drasyl.errors import IdentityError
from drasyl.identity import (
    I32_MAX,
    I32_MIN,
    Identity,
    load_or_generate,
    pow_difficulty,
    pow_is_valid,
    search_pow,
)

#: A fixed seed whose key has its first 20-bit PoW 1 050 839 candidates after i32::MIN,
#: just past the 2^20 progress interval: the search reports progress twice in ~1 s.
PROGRESS_SEED = bytes.fromhex("431ae9d47e30609c07edcde1ff502b5225b1b66ccb9d6a37844d88c00438bb33")
PROGRESS_DIFFICULTY = 20
PROGRESS_FIRST_POW = I32_MIN + 1_050_839


def _secret_key(seed: bytes) -> bytes:
    """libsodium layout seed ‖ public key, as drasyl-rs stores it."""
    return sodium.crypto_sign_seed_keypair(seed)[1]


def _fixed_identity() -> Identity:
    """A deterministic identity with a valid 8-bit PoW (cheap, so tests stay fast)."""
    sk = _secret_key(PROGRESS_SEED)
    return Identity(sk, search_pow(sk[32:], 8))


def _file_text(secret_key_hex: str, pow_value: int | str) -> str:
    """The exact layout of spec §2.2, written out by hand (not via the code under test)."""
    return f"[Identity]\nSecretKey = {secret_key_hex}\nProofOfWork = {pow_value}\n"


def _never_called(path: str) -> None:
    raise AssertionError(f"on_generate called for {path}: an existing file must not be replaced")


# --- proof of work -----------------------------------------------------------------------


@pytest.mark.parametrize("difficulty", [8, 10, 12])
def test_generate_reaches_the_requested_difficulty(difficulty: int) -> None:
    """A generated identity must pass the check a super peer applies to its PoW."""
    identity = Identity.generate(difficulty)
    assert identity.pow_difficulty() >= difficulty
    assert pow_is_valid(identity.public_key, identity.proof_of_work, difficulty)
    assert I32_MIN <= identity.proof_of_work <= I32_MAX
    # the public key is the last half of the secret key and belongs to its seed
    assert sodium.crypto_sign_seed_keypair(identity.secret_key[:32])[0] == identity.public_key


def test_generate_makes_a_new_key_each_time() -> None:
    """Two nodes must never share an address by accident."""
    assert Identity.generate(1).public_key != Identity.generate(1).public_key


@pytest.mark.parametrize("difficulty", [0, 1, 6, 8, 10])
def test_search_pow_returns_the_first_valid_candidate_from_i32_min(difficulty: int) -> None:
    """drasyl-rs searches upward from i32::MIN and keeps the first hit; so must we."""
    pk = _secret_key(PROGRESS_SEED)[32:]
    found = search_pow(pk, difficulty)
    assert pow_difficulty(pk, found) >= difficulty
    # pow_difficulty hashes independently of the search loop (full digest, not 64 bits)
    assert all(pow_difficulty(pk, c) < difficulty for c in range(I32_MIN, found))
    if difficulty == 0:
        assert found == I32_MIN


def test_search_pow_for_a_vector_key_starts_at_i32_min() -> None:
    """Low-difficulty search on a drasyl-rs key gives a value close to -2^31 like real PoWs."""
    pk = bytes.fromhex("9331341e09d313baa4027a2fccea4fd471b9637f2305de714009c46b9192e006")
    found = search_pow(pk, 6)
    assert I32_MIN <= found < I32_MIN + 10_000
    assert pow_is_valid(pk, found, 6)


@pytest.mark.parametrize("difficulty", [-1, 65])
def test_search_pow_rejects_impossible_difficulties(difficulty: int) -> None:
    """A difficulty outside 0..64 is a configuration error, not an endless loop."""
    with pytest.raises(IdentityError):
        search_pow(bytes(32), difficulty)


def test_search_pow_reports_progress_every_2_20_candidates() -> None:
    """The callback gets (candidates tried, expected tries) so a CLI can show a percentage."""
    calls: list[tuple[int, int]] = []
    pk = _secret_key(PROGRESS_SEED)[32:]
    found = search_pow(pk, PROGRESS_DIFFICULTY, lambda tried, expected: calls.append((tried, expected)))
    assert found == PROGRESS_FIRST_POW
    assert calls == [(0, 1 << PROGRESS_DIFFICULTY), (1 << 20, 1 << PROGRESS_DIFFICULTY)]


def test_generate_passes_progress_through() -> None:
    """Identity.generate hands its callback to the search (first report is at 0 tries)."""
    calls: list[tuple[int, int]] = []
    identity = Identity.generate(10, lambda tried, expected: calls.append((tried, expected)))
    if identity.proof_of_work == I32_MIN:  # first candidate valid (p = 2^-10): no report due
        assert calls == []
    else:
        assert calls[0] == (0, 1 << 10)
        assert all(tried % (1 << 20) == 0 and expected == 1 << 10 for tried, expected in calls)


# --- the identity file -------------------------------------------------------------------


def test_save_writes_exactly_the_three_line_format_with_mode_0600(tmp_path: Path) -> None:
    """Java drasyl and drasyl-rs read this exact layout; the secret key must stay private."""
    identity = _fixed_identity()
    path = tmp_path / "drasyl.identity"
    identity.save(path)
    assert path.read_bytes() == _file_text(identity.secret_key.hex(), identity.proof_of_work).encode()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["drasyl.identity"]  # no temp file left behind


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    """What we write is what we read back, field for field."""
    identity = Identity.generate(8)
    path = tmp_path / "node.identity"
    identity.save(str(path))
    loaded = Identity.load(path)
    assert loaded == identity
    assert (loaded.secret_key, loaded.proof_of_work) == (identity.secret_key, identity.proof_of_work)


@pytest.mark.parametrize("name", ["id_1", "id_2", "id_3"])
def test_load_reads_files_of_the_vector_identities(tmp_path: Path, derived: dict, ids: dict, name: str) -> None:
    """Identity files made by drasyl-rs (same text) load to the same key and PoW."""
    v = derived["identities"][name]
    path = tmp_path / f"{name}.identity"
    path.write_text(_file_text(v["secret_key_hex"], v["proof_of_work"]))
    loaded = Identity.load(path)
    assert loaded.public_key_hex == v["public_key_hex"]
    assert loaded.proof_of_work == v["proof_of_work"]
    assert loaded == ids[name]
    assert loaded.pow_difficulty() >= 24


@pytest.mark.parametrize(
    "text",
    [
        # no [Identity] line, other lines ignored, order swapped
        "# comment\nProofOfWork = {pow}\nSecretKey = {sk}\nOther = x\n",
        # spaces around the values and CRLF line ends
        "[Identity]\r\n  SecretKey=   {sk}  \r\n\tProofOfWork   =  {pow}\r\n",
        # upper-case hex and no final newline
        "[Identity]\nSecretKey = {SK}\nProofOfWork = {pow}",
        # the value is the text between the first and second '='
        "SecretKey = {sk} = trailing\nProofOfWork = {pow}\n",
    ],
)
def test_load_accepts_what_drasyl_rs_accepts(tmp_path: Path, text: str) -> None:
    """drasyl-rs trims lines and only looks for the two field prefixes (spec §2.2)."""
    identity = _fixed_identity()
    sk = identity.secret_key.hex()
    path = tmp_path / "x.identity"
    path.write_text(text.format(sk=sk, SK=sk.upper(), pow=identity.proof_of_work))
    assert Identity.load(path) == identity


def test_load_or_generate_creates_the_file_only_when_missing(tmp_path: Path) -> None:
    """First start creates and announces a new identity; later starts load the same one."""
    path = tmp_path / "drasyl.identity"
    announced: list[str] = []
    created = load_or_generate(path, difficulty=8, on_generate=announced.append)
    assert announced == [str(path)]
    assert created.pow_difficulty() >= 8
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    before = path.read_bytes()
    assert Identity.load(path) == created

    again = load_or_generate(path, difficulty=8, on_generate=_never_called)
    assert again == created
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["drasyl.identity"]


def test_load_or_generate_does_not_recheck_the_pow_of_a_loaded_file(tmp_path: Path) -> None:
    """drasyl-rs loads without re-checking the difficulty (spec §2.2); so do we."""
    identity = _fixed_identity()  # only 8 bits
    path = tmp_path / "drasyl.identity"
    identity.save(path)
    assert load_or_generate(path, difficulty=24, on_generate=_never_called) == identity


def _valid_sk_hex() -> str:
    return _secret_key(PROGRESS_SEED).hex()


def _mismatched_sk_hex() -> str:
    """A seed with another key's public half: drasyl-rs would use a wrong address."""
    return (PROGRESS_SEED + _secret_key(hashlib.sha256(b"other").digest())[32:]).hex()


MALFORMED: dict[str, tuple[bytes, str | None]] = {
    # name: (file bytes, the "line N" the message must name, or None when no line is known)
    "bad hex": (_file_text("zz" * 64, 1).encode(), "line 2"),
    "secret key too short": (_file_text(_valid_sk_hex()[:126], 1).encode(), "line 2"),
    "secret key too long": (_file_text(_valid_sk_hex() + "00", 1).encode(), "line 2"),
    "secret key without '='": (b"[Identity]\nSecretKey\nProofOfWork = 1\n", "line 2"),
    "missing SecretKey": (b"[Identity]\nProofOfWork = 1\n", None),
    "missing ProofOfWork": (f"[Identity]\nSecretKey = {_valid_sk_hex()}\n".encode(), None),
    "empty file": (b"", None),
    "non-integer pow": (_file_text(_valid_sk_hex(), "abc").encode(), "line 3"),
    "fractional pow": (_file_text(_valid_sk_hex(), "1.5").encode(), "line 3"),
    "empty pow": (_file_text(_valid_sk_hex(), "").encode(), "line 3"),
    "pow above i32": (_file_text(_valid_sk_hex(), I32_MAX + 1).encode(), "line 3"),
    "pow below i32": (_file_text(_valid_sk_hex(), I32_MIN - 1).encode(), "line 3"),
    "not UTF-8": (b"[Identity]\nSecretKey = \xff\xfe\x00\x80\nProofOfWork = 1\n", None),
    "public half does not match seed": (_file_text(_mismatched_sk_hex(), 1).encode(), "line 2"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_file_is_an_identity_error_and_is_never_replaced(tmp_path: Path, case: str) -> None:
    """A broken file means an operator must look: never silently mint a new address."""
    content, line = MALFORMED[case]
    path = tmp_path / "drasyl.identity"
    path.write_bytes(content)
    with pytest.raises(IdentityError) as exc_info:
        load_or_generate(path, difficulty=1, on_generate=_never_called)
    message = str(exc_info.value)
    assert str(path) in message
    if line is not None:
        assert line in message
    assert _valid_sk_hex() not in message  # the error must not leak the secret key
    assert path.read_bytes() == content
    assert os.listdir(tmp_path) == ["drasyl.identity"]
    with pytest.raises(IdentityError):  # plain load agrees
        Identity.load(path)


def test_unreadable_path_is_an_identity_error_and_is_left_alone(tmp_path: Path) -> None:
    """A directory where the file should be cannot be read (chmod 000 does not stop root)."""
    path = tmp_path / "drasyl.identity"
    path.mkdir()
    (path / "keep").write_bytes(b"x")
    with pytest.raises(IdentityError) as exc_info:
        load_or_generate(path, difficulty=1, on_generate=_never_called)
    assert str(path) in str(exc_info.value)
    assert path.is_dir() and os.listdir(path) == ["keep"]
    assert os.listdir(tmp_path) == ["drasyl.identity"]


def test_dangling_symlink_is_an_identity_error_not_a_new_identity(tmp_path: Path) -> None:
    """A symlink to a missing file (an unmounted volume, say) must not get a fresh key."""
    path = tmp_path / "drasyl.identity"
    path.symlink_to(tmp_path / "missing" / "target.identity")
    with pytest.raises(IdentityError) as exc_info:
        load_or_generate(path, difficulty=1, on_generate=_never_called)
    assert str(path) in str(exc_info.value)
    assert path.is_symlink() and not (tmp_path / "missing").exists()


def test_save_refuses_to_overwrite_an_existing_file(tmp_path: Path) -> None:
    """Saving over an identity would change the node's address: refuse, name the file."""
    path = tmp_path / "drasyl.identity"
    path.write_bytes(b"someone else's identity\n")
    with pytest.raises(IdentityError) as exc_info:
        _fixed_identity().save(path)
    assert str(path) in str(exc_info.value)
    assert path.read_bytes() == b"someone else's identity\n"
    assert os.listdir(tmp_path) == ["drasyl.identity"]


def test_save_refuses_to_overwrite_a_valid_identity(tmp_path: Path) -> None:
    """Even a second valid identity must not replace the first one."""
    path = tmp_path / "drasyl.identity"
    first = _fixed_identity()
    first.save(path)
    before = path.read_bytes()
    with pytest.raises(IdentityError):
        Identity.generate(1).save(path)
    assert path.read_bytes() == before
    assert Identity.load(path) == first
    assert os.listdir(tmp_path) == ["drasyl.identity"]


def test_save_into_a_missing_directory_is_an_identity_error(tmp_path: Path) -> None:
    """An OSError while writing is reported as an IdentityError naming the file."""
    path = tmp_path / "no" / "such" / "dir" / "drasyl.identity"
    with pytest.raises(IdentityError) as exc_info:
        _fixed_identity().save(path)
    assert str(path) in str(exc_info.value)
    assert os.listdir(tmp_path) == []


def test_repr_and_str_do_not_show_the_secret_key() -> None:
    """Identities end up in logs; only the public key may appear there."""
    identity = _fixed_identity()
    for text in (repr(identity), str(identity), f"{identity!r}"):
        assert identity.secret_key.hex() not in text
        assert identity.secret_key[:32].hex() not in text  # the seed alone is the secret
        assert identity.public_key_hex in text
        assert str(identity.proof_of_work) in text
