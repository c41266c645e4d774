"""Node identity: the Ed25519 key pair, its proof of work and the ``[Identity]`` file.

The public key is the node's address, so an identity file is never replaced: it is created
only when missing (atomically, mode 0600), and a file that exists but cannot be read or
parsed is an :class:`~drasyl.errors.IdentityError` naming the file and the line.
This module performs file I/O only in :meth:`Identity.load`, :meth:`Identity.save`,
:func:`load_or_generate` and :func:`mode_warning`; everything else is pure.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import nacl.bindings as sodium

from .errors import CryptoError, IdentityError
from .files import write_atomic

DEFAULT_POW_DIFFICULTY = 24
I32_MIN = -(2**31)
I32_MAX = 2**31 - 1

#: Called during a proof-of-work search with (candidates tried, expected number of tries).
ProgressCallback = Callable[[int, int], None]
_I32_TEXT = re.compile(r"[+-]?[0-9]+")  # what Rust's i32 parser takes; int() also takes "1_0"


def parse_public_key(text: str) -> bytes:
    """Parse a 64-character hex public key (either case), as drasyl-rs does."""
    text = text.strip()
    if len(text) != 64:
        raise CryptoError(f"public key must be 64 hex characters, got {len(text)}: {text!r}")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise CryptoError(f"public key is not hex: {text!r}") from None


def pow_difficulty(public_key: bytes, proof_of_work: int) -> int:
    """Leading zero bits of SHA-256(lowercase hex(pk) ‖ decimal pow) (spec §2.3)."""
    digest = hashlib.sha256(public_key.hex().encode() + str(proof_of_work).encode()).digest()
    return 256 - int.from_bytes(digest, "big").bit_length()


def pow_is_valid(public_key: bytes, proof_of_work: int, difficulty: int) -> bool:
    return pow_difficulty(public_key, proof_of_work) >= difficulty


def search_pow(
    public_key: bytes, difficulty: int, progress: ProgressCallback | None = None
) -> int:
    """Find the first PoW from i32::MIN upward that reaches ``difficulty`` leading zero bits."""
    if not 0 <= difficulty <= 64:
        raise IdentityError(f"PoW difficulty must be between 0 and 64, got {difficulty}")
    prefix = hashlib.sha256(public_key.hex().encode())
    shift = 64 - difficulty
    expected = 1 << difficulty
    from_bytes = int.from_bytes
    for candidate in range(I32_MIN, I32_MAX + 1):
        h = prefix.copy()
        h.update(str(candidate).encode())
        if from_bytes(h.digest()[:8], "big") >> shift == 0:
            return candidate
        if progress is not None and (candidate & 0xFFFFF) == 0:
            progress(candidate - I32_MIN, expected)
    raise IdentityError(f"no proof of work of difficulty {difficulty} exists for this key")


@dataclass(frozen=True)
class Identity:
    """An Ed25519 identity in drasyl's layout: ``secret_key`` = seed(32) ‖ public key(32)."""

    secret_key: bytes = field(repr=False)
    proof_of_work: int

    def __post_init__(self) -> None:
        if len(self.secret_key) != 64:
            raise IdentityError("secret key must be 64 bytes (seed ‖ public key)")
        if not I32_MIN <= self.proof_of_work <= I32_MAX:
            raise IdentityError("proof of work must be a signed 32-bit integer")
        derived, _ = sodium.crypto_sign_seed_keypair(self.secret_key[:32])
        if derived != self.secret_key[32:]:
            raise IdentityError("secret key: its public half does not belong to its seed")

    def __repr__(self) -> str:  # never show the secret key
        return f"Identity(public_key={self.public_key_hex}, proof_of_work={self.proof_of_work})"

    @property
    def public_key(self) -> bytes:
        """The node's address: the last 32 bytes of the secret key (as drasyl-rs reads it)."""
        return self.secret_key[32:]

    @property
    def public_key_hex(self) -> str:
        return self.secret_key[32:].hex()

    @cached_property
    def x25519_public_key(self) -> bytes:
        return sodium.crypto_sign_ed25519_pk_to_curve25519(self.public_key)

    @cached_property
    def x25519_secret_key(self) -> bytes:
        return sodium.crypto_sign_ed25519_sk_to_curve25519(self.secret_key)

    def pow_difficulty(self) -> int:
        return pow_difficulty(self.public_key, self.proof_of_work)

    @classmethod
    def generate(
        cls, difficulty: int = DEFAULT_POW_DIFFICULTY, progress: ProgressCallback | None = None
    ) -> Identity:
        """New random key pair with a proof of work of ``difficulty`` bits (seconds at 24)."""
        public_key, secret_key = sodium.crypto_sign_seed_keypair(os.urandom(32))
        return cls(secret_key, search_pow(public_key, difficulty, progress))

    @classmethod
    def from_hex(cls, secret_key_hex: str, proof_of_work: int) -> Identity:
        return cls(bytes.fromhex(secret_key_hex), proof_of_work)

    def to_file_text(self) -> str:
        return (
            "[Identity]\n"
            f"SecretKey = {self.secret_key.hex()}\n"
            f"ProofOfWork = {self.proof_of_work}\n"
        )

    @classmethod
    def from_file_text(cls, text: str, path: str = "<identity>") -> Identity:
        """Parse the ``[Identity]`` format of spec §2.2; errors name ``path`` and the line."""
        secret: tuple[int, bytes] | None = None
        pow_value: int | None = None
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            where = f"identity file '{path}', line {number}"
            if line.startswith("SecretKey"):
                value = _field_value(line, where)
                if len(value) != 128:
                    raise IdentityError(
                        f"{where}: SecretKey must be 128 hex characters, got {len(value)}"
                    )
                try:
                    secret = (number, bytes.fromhex(value))
                except ValueError:
                    raise IdentityError(f"{where}: SecretKey is not hexadecimal") from None
            elif line.startswith("ProofOfWork"):
                value = _field_value(line, where)
                if not _I32_TEXT.fullmatch(value):
                    raise IdentityError(f"{where}: ProofOfWork {value!r} is not an integer")
                pow_value = int(value)
                if not I32_MIN <= pow_value <= I32_MAX:
                    raise IdentityError(f"{where}: ProofOfWork is not a signed 32-bit integer")
        if secret is None:
            raise IdentityError(f"identity file '{path}': no 'SecretKey = …' line")
        if pow_value is None:
            raise IdentityError(f"identity file '{path}': no 'ProofOfWork = …' line")
        try:
            return cls(secret[1], pow_value)
        except IdentityError as exc:
            raise IdentityError(f"identity file '{path}', line {secret[0]}: {exc}") from None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Identity:
        path = os.fspath(path)
        try:
            with open(path, "rb") as fh:
                raw = fh.read()
        except OSError as exc:
            raise IdentityError(f"cannot read identity file '{path}': {exc.strerror}") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise IdentityError(f"identity file '{path}' is not UTF-8 text") from None
        return cls.from_file_text(text, path)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the file atomically with mode 0600; refuse to replace an existing file."""
        path = os.fspath(path)
        try:
            write_atomic(path, self.to_file_text().encode(), exclusive=True)
        except FileExistsError:
            raise IdentityError(f"identity file '{path}' already exists; not overwritten") from None
        except OSError as exc:
            raise IdentityError(f"cannot write identity file '{path}': {exc.strerror}") from None

def _field_value(line: str, where: str) -> str:
    """Text between the first and second '=' (drasyl-rs' rule), trimmed."""
    parts = line.split("=")
    if len(parts) < 2:
        raise IdentityError(f"{where}: expected 'Name = value'")
    return parts[1].strip()


def load_or_generate(
    path: str | os.PathLike[str],
    difficulty: int = DEFAULT_POW_DIFFICULTY,
    on_generate: Callable[[str], None] | None = None,
    progress: ProgressCallback | None = None,
) -> Identity:
    """Load ``path``; only when it does not exist, generate and save a new identity."""
    path = os.fspath(path)
    if os.path.lexists(path):
        return Identity.load(path)
    if on_generate is not None:
        on_generate(path)
    identity = Identity.generate(difficulty, progress)
    identity.save(path)
    return identity


def mode_warning(path: str | os.PathLike[str], what: str = "identity file") -> str | None:
    """A one-line warning if group or others may access the file holding the secret key
    (drasyl-sp's identity file, the agent's config.toml), else None.

    drasyl-rs and :meth:`Identity.save` write it with mode 0600. Daemons print this at start
    instead of refusing to run.
    """
    path = os.fspath(path)
    try:
        mode = os.stat(path).st_mode & 0o777
    except OSError:
        return None
    if not mode & 0o077:
        return None
    return (f"{what} '{path}' is accessible by group or others (mode {mode:04o}); "
            f"it holds the secret key: chmod 600 '{path}'")
