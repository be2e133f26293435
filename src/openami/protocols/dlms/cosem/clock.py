"""Clock (class 8) interface class (Blue Book, clause 4.5.1).

The meter's clock is the real time plus an offset: SET of attribute 2 and method 6 ``shift_time``
move the offset, and a simulator starts it off zero to model drift. ``time`` travels as the
12-byte date-time octet-string, with this clock's deviation (local = UTC - deviation) and status.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from openami.protocols.dlms.axdr import Enum, Integer, Long, Unsigned
from openami.protocols.dlms.cosem.base import (
    AssociationView,
    CosemAccessError,
    CosemObject,
    Result,
    Value,
    as_bytes,
    as_int,
)
from openami.protocols.dlms.cosem_time import CosemDateTime
from openami.protocols.dlms.errors import DlmsError
from openami.protocols.dlms.obis import Obis

__all__ = ["Clock", "utc_now"]

_NOT_SPECIFIED_DATE_TIME = bytes([0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x80, 0x00, 0xFF])
_CLOCK_BASE_CRYSTAL = 1
_MAX_SHIFT_S = 900


def utc_now() -> datetime:
    """The real time, aware UTC."""
    return datetime.now(UTC)


class Clock(CosemObject):
    """Clock (class_id 8, version 0).

    Attributes: 2 time, 3 time_zone (long, minutes, same sign as the date-time deviation),
    4 status, 5/6 daylight_savings_begin/end, 7 daylight_savings_deviation, 8
    daylight_savings_enabled, 9 clock_base. Writable: 2 and 3. Method 6 ``shift_time(long s)``
    (-900..900) is implemented; methods 1-5 answer other-reason.
    """

    class_id = 8
    attribute_count = 9
    method_count = 6
    writable = frozenset({2, 3})

    def __init__(
        self,
        logical_name: Obis,
        *,
        now: Callable[[], datetime] = utc_now,
        offset: timedelta = timedelta(0),
        deviation: int = 0,
    ) -> None:
        super().__init__(logical_name)
        self._now = now
        self.offset = offset
        self.deviation = deviation
        self.status = 0

    def time(self) -> datetime:
        """The meter's notion of now (aware UTC)."""
        return self._now() + self.offset

    def _get(self, attribute: int, view: AssociationView, selector: int | None, parameters: Value) -> Value:
        if attribute == 2:
            return CosemDateTime.from_datetime(self.time(), self.deviation, clock_status=self.status).to_bytes()
        if attribute == 3:
            return Long(self.deviation)
        if attribute == 4:
            return Unsigned(self.status)
        if attribute in (5, 6):
            return _NOT_SPECIFIED_DATE_TIME
        if attribute == 7:
            return Integer(0)
        if attribute == 8:
            return False
        return Enum(_CLOCK_BASE_CRYSTAL)

    def _set(self, attribute: int, value: Value, view: AssociationView) -> None:
        if attribute == 3:
            self.deviation = as_int(value, -720, 720, "time_zone")
            return
        try:
            wanted = CosemDateTime.from_bytes(as_bytes(value, "time", 12)).to_datetime()
        except DlmsError:
            raise CosemAccessError(Result.TYPE_UNMATCHED, "time is not a concrete date-time") from None
        self.offset = wanted - self._now()

    def _action(self, method: int, parameters: Value, view: AssociationView) -> Value:
        if method != 6:
            return super()._action(method, parameters, view)
        self.offset += timedelta(seconds=as_int(parameters, -_MAX_SHIFT_S, _MAX_SHIFT_S, "shift_time"))
        return None
