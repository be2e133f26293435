"""Limiter (class 71) interface class (Blue Book, clause 4.5.9), version 0, server role.

Attributes: 2 monitored_value (``value_definition``: class id, logical name, attribute index), 3
threshold_active, 4 threshold_normal, 5 threshold_emergency, 6 min_over_threshold_duration (s), 7
min_under_threshold_duration (s), 8 emergency_profile {id, activation time, duration}, 9
emergency_profile_group_id_list, 10 emergency_profile_active, 11 actions {over, under} (script
references). No methods.

In openami every threshold is set by a signed command through the Signed Command Gateway, never by
a SET: every attribute is read-only to every client, so a head-end holding only the ciphering keys
cannot lower a customer's limit to force a trip. Thresholds are watts (double-long-unsigned, the
type of the monitored instantaneous power); a threshold that is not set reads as null-data.

The limiter watches the demand it is given (:meth:`Limiter.observe`) and says when it trips:
demand above the active threshold for at least ``min_over_threshold_duration`` seconds. What a trip
does (open the switch) is the caller's business, as the ``actions`` attribute only names a script.
"""

from __future__ import annotations

from openami.protocols.dlms.axdr import Array, DoubleLongUnsigned, Integer, LongUnsigned, Structure
from openami.protocols.dlms.cosem.base import AssociationView, CosemObject, Value
from openami.protocols.dlms.obis import INSTANT_POWER, Obis
from openami.protocols.dlms.signed_command import LimitParameters

__all__ = ["DISCONNECT_SCRIPT_TABLE", "Limiter"]

DISCONNECT_SCRIPT_TABLE = Obis(0, 0, 10, 0, 106, 255)
"""The disconnect-control script table (class 9); script 1 is remote_disconnect (IDIS)."""
_DISCONNECT_SCRIPT = 1
_NO_SCRIPT = 0
_UNSPECIFIED_TIME = b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x80\x00\xff"


def _watts(value: int | None) -> Value:
    return None if value is None else DoubleLongUnsigned(value)


class Limiter(CosemObject):
    """Limiter (class_id 71, version 0) monitoring instantaneous active power import (1.0.1.7.0.255)."""

    class_id = 71
    attribute_count = 11
    method_count = 0
    writable = frozenset()

    def __init__(self, logical_name: Obis, *, monitored: Obis = INSTANT_POWER) -> None:
        super().__init__(logical_name)
        self.monitored = monitored
        self.threshold_normal: int | None = None
        self.threshold_emergency: int | None = None
        self.emergency_profile_active = False
        self.min_over_threshold_duration = 0
        self.min_under_threshold_duration = 0
        self._over_since: float | None = None

    @property
    def threshold_active(self) -> int | None:
        """The threshold in force (W), the emergency one while the emergency profile is active."""
        return self.threshold_emergency if self.emergency_profile_active else self.threshold_normal

    def set_limit(self, limit: LimitParameters) -> None:
        """Apply a verified limit: the normal or the emergency threshold, and its duration."""
        if limit.emergency:
            self.threshold_emergency = limit.threshold_w
        else:
            self.threshold_normal = limit.threshold_w
        self.emergency_profile_active = limit.emergency
        self.min_over_threshold_duration = limit.duration_s
        self._over_since = None

    def cancel(self) -> None:
        """Remove every limit (both thresholds; the emergency profile ends)."""
        self.threshold_normal = None
        self.threshold_emergency = None
        self.emergency_profile_active = False
        self.min_over_threshold_duration = 0
        self._over_since = None

    def observe(self, demand_w: float, at: float) -> bool:
        """Feed the demand measured at ``at`` (epoch s); True when the limiter trips now.

        It trips once demand has stayed above the active threshold for the minimum duration; the
        count starts again after a trip or when demand falls back.
        """
        threshold = self.threshold_active
        if threshold is None or demand_w <= threshold:
            self._over_since = None
            return False
        if self._over_since is None:
            self._over_since = at
        if at - self._over_since >= self.min_over_threshold_duration:
            self._over_since = None
            return True
        return False

    def _get(self, attribute: int, view: AssociationView, selector: int | None, parameters: Value) -> Value:
        values: dict[int, Value] = {
            2: Structure((LongUnsigned(3), self.monitored.to_bytes(), Integer(2))),
            3: _watts(self.threshold_active),
            4: _watts(self.threshold_normal),
            5: _watts(self.threshold_emergency),
            6: DoubleLongUnsigned(self.min_over_threshold_duration),
            7: DoubleLongUnsigned(self.min_under_threshold_duration),
            8: Structure((LongUnsigned(0), _UNSPECIFIED_TIME, DoubleLongUnsigned(0))),
            9: Array(),
            10: self.emergency_profile_active,
            11: Structure(
                (
                    Structure((DISCONNECT_SCRIPT_TABLE.to_bytes(), LongUnsigned(_DISCONNECT_SCRIPT))),
                    Structure((DISCONNECT_SCRIPT_TABLE.to_bytes(), LongUnsigned(_NO_SCRIPT))),
                )
            ),
        }
        return values[attribute]
