"""Which protocol failures the reader reports as meter-side security events (security.events kinds)."""

from __future__ import annotations

import pytest

from openami.errors import AssociationRejected, AuthenticationFailed, MeterTimeout
from openami.headend.reader import MeterSecurityFailure, _translate
from openami.protocols.dlms.errors import AssociationError, AuthenticationTagError, ReplayError, SecurityError
from openami.protocols.dlms.session_errors import DlmsTimeoutError, HlsAuthenticationError


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (AuthenticationTagError("tag"), "meter.bad-tag"),
        (SecurityError("not ciphered"), "meter.bad-tag"),
        (ReplayError("again", expected=8), "meter.replay"),
        (HlsAuthenticationError("f(CtoS) does not verify"), "meter.hls-failed"),
        (AssociationError("refused", diagnostic=13), "meter.hls-failed"),
    ],
)
def test_security_failures_carry_their_event_kind(error: Exception, kind: str) -> None:
    translated = _translate(error, "OAM00000001", "profile")
    assert isinstance(translated, MeterSecurityFailure)
    assert isinstance(translated, AuthenticationFailed)  # still not retried by the collector
    assert (translated.kind, translated.step) == (kind, "profile")


@pytest.mark.parametrize(
    ("error", "expected"),
    [(AssociationError("busy", diagnostic=1), AssociationRejected), (DlmsTimeoutError("late"), MeterTimeout)],
)
def test_other_failures_are_not_security_events(error: Exception, expected: type[Exception]) -> None:
    translated = _translate(error, "OAM00000001", "connect")
    assert isinstance(translated, expected)
    assert not isinstance(translated, MeterSecurityFailure)
