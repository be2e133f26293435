"""Disconnect Control (class 70) interface class (Blue Book, clause 4.5.8), state only.

States (control_state): 0 disconnected, 1 connected, 2 ready_for_reconnection. Remote
transitions by control_mode: mode 0 has no remote control (always connected); modes 1-6 allow
``remote_disconnect`` (b, c); ``remote_reconnect`` closes the switch at once in modes 2 and 4
(transition a) and only arms it (ready_for_reconnection, transition d) in modes 1, 3, 5 and 6, where
the customer closes it locally. ``output_state`` is True exactly when connected.
"""

from __future__ import annotations

import enum

from openami.protocols.dlms.axdr import Enum
from openami.protocols.dlms.cosem.base import AssociationView, CosemAccessError, CosemObject, Result, Value, as_int
from openami.protocols.dlms.obis import Obis

__all__ = ["ControlState", "DisconnectControl"]


class ControlState(enum.IntEnum):
    DISCONNECTED = 0
    CONNECTED = 1
    READY_FOR_RECONNECTION = 2


_DIRECT_RECONNECT_MODES = frozenset({2, 4})
_MAX_MODE = 6


class DisconnectControl(CosemObject):
    """Disconnect control (class_id 70, version 0): 2 output_state, 3 control_state, 4 control_mode.

    Methods 1 remote_disconnect and 2 remote_reconnect take ``integer 0``. control_mode is
    writable (0-6). An action not allowed in the current mode or state answers temporary-failure.
    """

    class_id = 70
    attribute_count = 4
    method_count = 2
    writable = frozenset({4})

    def __init__(
        self, logical_name: Obis, *, control_mode: int = 1, state: ControlState = ControlState.CONNECTED
    ) -> None:
        super().__init__(logical_name)
        self.control_mode = control_mode
        self.control_state = state

    @property
    def output_state(self) -> bool:
        return self.control_state is ControlState.CONNECTED

    def _get(self, attribute: int, view: AssociationView, selector: int | None, parameters: Value) -> Value:
        if attribute == 2:
            return self.output_state
        if attribute == 3:
            return Enum(self.control_state)
        return Enum(self.control_mode)

    def _set(self, attribute: int, value: Value, view: AssociationView) -> None:
        self.control_mode = as_int(value, 0, _MAX_MODE, "control_mode")

    def _action(self, method: int, parameters: Value, view: AssociationView) -> Value:
        as_int(parameters, -128, 127, "the method parameter")
        if self.control_mode == 0:
            raise CosemAccessError(Result.TEMPORARY_FAILURE, "control mode 0 has no remote control")
        if method == 1:
            self.control_state = ControlState.DISCONNECTED
            return None
        if self.control_state is not ControlState.DISCONNECTED:
            return None  # already connected or armed: reconnect is idempotent
        direct = self.control_mode in _DIRECT_RECONNECT_MODES
        self.control_state = ControlState.CONNECTED if direct else ControlState.READY_FOR_RECONNECTION
        return None

    def local_reconnect(self) -> None:
        """The customer presses the button: an armed switch closes (transition e)."""
        if self.control_state is ControlState.READY_FOR_RECONNECTION:
            self.control_state = ControlState.CONNECTED
