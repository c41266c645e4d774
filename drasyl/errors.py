"""The one error family of the drasyl package.

Everything this package raises on purpose derives from :class:`DrasylError`, so that a
daemon can catch exactly "bad input" and never an ``IndexError`` from deep inside a parser.
It must not contain logic beyond the exception classes.
"""


class DrasylError(Exception):
    """Base class of every error this package raises for bad input or bad configuration."""


class MalformedMessage(DrasylError):
    """A datagram or TCP frame is not a valid drasyl message (runt, bad magic, bad body...)."""


class DisarmError(MalformedMessage):
    """An armed body failed authentication (wrong key, tampered, or too short)."""


class CryptoError(DrasylError):
    """Keys cannot be used: a public key that does not decompress, or a session with itself."""


class IdentityError(DrasylError):
    """An identity file is unreadable or malformed; the message names the file and the line."""


class ConfigError(DrasylError):
    """A configuration value (URL, environment variable, option) is invalid."""
