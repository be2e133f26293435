"""The one error tree of the platform; the API maps it to RFC 9457 problem+json."""

from __future__ import annotations


class OpenAmiError(Exception):
    """Base of every error the platform raises on purpose.

    ``code`` is a stable, machine-readable slug; ``message`` is for people and never carries keys
    or personal data.
    """

    code = "openami-error"
    http_status = 500

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class NotFound(OpenAmiError):
    code = "not-found"
    http_status = 404


class Conflict(OpenAmiError):
    code = "conflict"
    http_status = 409


class InvalidInput(OpenAmiError):
    code = "invalid-input"
    http_status = 422


class Unauthenticated(OpenAmiError):
    code = "unauthenticated"
    http_status = 401


class PermissionDenied(OpenAmiError):
    code = "permission-denied"
    http_status = 403


class StorageUnavailable(OpenAmiError):
    code = "storage-unavailable"
    http_status = 503


class MeterCommunicationError(OpenAmiError):
    """A meter could not be read or commanded; ``step`` names where it failed."""

    code = "meter-communication"
    http_status = 502

    def __init__(self, message: str, *, step: str = "unknown", code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.step = step


class MeterTimeout(MeterCommunicationError):
    code = "meter-timeout"
    http_status = 504


class MeterUnreachable(MeterCommunicationError):
    code = "meter-unreachable"


class AssociationRejected(MeterCommunicationError):
    code = "association-rejected"


class AuthenticationFailed(MeterCommunicationError):
    code = "meter-authentication-failed"
