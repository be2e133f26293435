"""The DLMS/COSEM protocol's error tree (sans-IO: raised by codecs, never logged here).

Messages name what was wrong and where; they never carry key material, authentication values or
deciphered content, so they are safe to log and to show.
"""

from __future__ import annotations

__all__ = [
    "AssociationError",
    "AuthenticationTagError",
    "CipheringRequiredError",
    "DecodeError",
    "DlmsError",
    "EncodeError",
    "ProtocolStateError",
    "ReplayError",
    "SecurityError",
]


class DlmsError(Exception):
    """Base of every error the DLMS/COSEM protocol package raises on purpose."""


class DecodeError(DlmsError):
    """Malformed input: the only exception a decoder raises on bytes it cannot accept.

    ``offset`` is the position in the decoded buffer where the problem was found and ``expected``
    says, in a few words, what the decoder wanted to see there.
    """

    def __init__(self, message: str, *, offset: int, expected: str) -> None:
        super().__init__(f"{message} (at offset {offset}, expected {expected})")
        self.message = message
        self.offset = offset
        self.expected = expected


class EncodeError(DlmsError):
    """A value that cannot be encoded: out of range for its type, or of a type with no encoding."""


class SecurityError(DlmsError):
    """Base of the Security Suite 0 failures (DLMS UA 1000-2 Green Book, clause 9.2)."""


class AuthenticationTagError(SecurityError):
    """The GCM authentication tag (or the HLS-GMAC value) did not verify: wrong key or tampering."""


class ReplayError(SecurityError):
    """An invocation counter not greater than the last one accepted from that sender.

    ``expected`` is the smallest counter the receiver would accept (last accepted + 1); it is what
    an exception-response ``D8 01 06`` carries back to the sender.
    """

    def __init__(self, message: str, *, expected: int) -> None:
        super().__init__(message)
        self.expected = expected


class CipheringRequiredError(SecurityError):
    """An unciphered APDU where the security policy requires ciphering."""


class AssociationError(DlmsError):
    """An application association was rejected or could not be established.

    ``diagnostic`` is the ACSE service-user diagnostic (IEC 62056-5-3, AARE
    result-source-diagnostic), for example 13 for authentication failure.
    """

    def __init__(self, message: str, *, diagnostic: int) -> None:
        super().__init__(message)
        self.diagnostic = diagnostic


class ProtocolStateError(DlmsError):
    """An event or APDU that is not allowed in the current protocol state."""
