"""Errors of a DLMS session above the codec: association, service results, transport.

They extend the codec's tree (``openami.protocols.dlms.errors``) so that a head-end catches
``DlmsError`` for everything the protocol raises. Messages never carry keys, authentication values
or deciphered APDUs.
"""

from __future__ import annotations

from openami.protocols.dlms.errors import AssociationError, DlmsError

__all__ = [
    "AssociationRejectedError",
    "ConnectionClosedError",
    "DlmsTimeoutError",
    "ExceptionResponseError",
    "HlsAuthenticationError",
    "ServiceError",
]


class AssociationRejectedError(AssociationError):
    """The server answered the AARQ with an AARE ``rejected`` (IEC 62056-5-3, clause 7.2).

    ``result`` is 1 (rejected-permanent) or 2 (rejected-transient); ``diagnostic`` the
    acse-service-user diagnostic (1 no reason, 2 context not supported, 11 mechanism not recognised,
    12 mechanism required, 13 authentication failure).
    """

    def __init__(self, message: str, *, result: int, diagnostic: int) -> None:
        super().__init__(message, diagnostic=diagnostic)
        self.result = result


class HlsAuthenticationError(AssociationError):
    """HLS pass 3 or 4 failed: the server refused our f(StoC) or its f(CtoS) did not verify."""

    def __init__(self, message: str) -> None:
        super().__init__(message, diagnostic=13)


class ServiceError(DlmsError):
    """A GET/SET/ACTION answered with a data-access-result or action-result other than success."""

    def __init__(self, message: str, *, result: int) -> None:
        super().__init__(message)
        self.result = result


class ExceptionResponseError(DlmsError):
    """The server answered with an exception-response (IEC 62056-5-3, clause 8.5, ExceptionResponse).

    ``state_error`` 1 service-not-allowed, 2 service-unknown; ``service_error`` 1
    operation-not-possible, 2 service-not-supported, 3 other-reason, 4 pdu-too-long, 5
    deciphering-error, 6 invocation-counter-error (then ``expected_ic`` is the counter it wants).
    """

    def __init__(self, message: str, *, state_error: int, service_error: int, expected_ic: int | None = None) -> None:
        super().__init__(message)
        self.state_error = state_error
        self.service_error = service_error
        self.expected_ic = expected_ic


class DlmsTimeoutError(DlmsError):
    """No (complete) answer within the request's timeout."""


class ConnectionClosedError(DlmsError):
    """The transport closed (or could not be opened) before the exchange finished."""
