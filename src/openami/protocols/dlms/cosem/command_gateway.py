"""openami's Signed Command Gateway (manufacturer-specific class 200) and the switch it alone may move.

Blue Book Disconnect Control (class 70) and Limiter (class 71) obey whoever holds an association
with method or write access, that is whoever holds the ciphering and authentication keys: a head-end,
or an attacker inside it. Here the switch and the thresholds move only for a command the command
authority signed (``signed_command``): the gateway verifies it against the pinned authority
certificate and then acts on :class:`SignedDisconnectControl` and the :class:`Limiter`, whose own
methods and attributes no client may invoke or write.

Gateway (class_id 200, version 0, logical name 0.128.96.3.10.255):

- attribute 2 ``authority_fingerprint``: octet-string, SHA-256 of the pinned certificate's DER
  (null-data when none is pinned);
- attribute 3 ``last_counter``: long64-unsigned, the counter of the last accepted command;
- attribute 4 ``last_refusal``: ``structure {counter | null-data, enum reason, date-time}`` or null-data;
- attribute 5 ``ignore_disconnects``: boolean;
- method 1 ``execute(structure {octet-string envelope, octet-string signature})``: success with the
  :class:`Confirmation`; read-write-denied when verification fails, temporary-failure when the meter
  ignores disconnects or has no authority pinned. The reason is in attribute 4.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from openami.protocols.dlms.axdr import Long64Unsigned
from openami.protocols.dlms.cosem.base import (
    AccessRights,
    AssociationView,
    CosemAccessError,
    CosemObject,
    Result,
    Value,
)
from openami.protocols.dlms.cosem.disconnect import ControlState, DisconnectControl
from openami.protocols.dlms.cosem.limiter import Limiter
from openami.protocols.dlms.errors import DecodeError
from openami.protocols.dlms.obis import Obis
from openami.protocols.dlms.signed_command import (
    Command,
    CommandRefused,
    Confirmation,
    Envelope,
    Refusal,
    RefusalRecord,
    SignedCommand,
    authority_fingerprint,
    public_key_from_certificate,
    verify_signed_command,
)

__all__ = ["GATEWAY_CLASS_ID", "GatewaySite", "SignedCommandGateway", "SignedDisconnectControl"]

GATEWAY_CLASS_ID = 200
_EXECUTE = 1
# Commands refused while the meter ignores disconnects: both can open the switch (a limit by tripping).
_OPENING_COMMANDS = frozenset({Command.DISCONNECT, Command.SET_LIMIT})


class SignedDisconnectControl(DisconnectControl):
    """Disconnect Control whose remote methods and control mode no client may use (read-only object).

    Only the gateway (a verified signed command), the customer's button and the meter itself (a
    limiter trip, a fault) move the switch, through the methods below; each returns whether the
    state changed.
    """

    writable = frozenset()

    def natural_rights(self) -> AccessRights:
        return AccessRights(super().natural_rights().attributes, {})

    def _action(self, method: int, parameters: Value, view: AssociationView) -> Value:
        raise CosemAccessError(Result.READ_WRITE_DENIED, "the switch moves only for a signed command")

    def _move(self, to: ControlState, *, allowed_from: frozenset[ControlState] | None = None) -> bool:
        if self.control_state is to or (allowed_from is not None and self.control_state not in allowed_from):
            return False
        self.control_state = to
        return True

    def open(self) -> bool:
        return self._move(ControlState.DISCONNECTED)

    def close(self) -> bool:
        return self._move(ControlState.CONNECTED)

    def arm(self) -> bool:
        """Ready for reconnection: only a disconnected switch can be armed (a closed one stays closed)."""
        return self._move(ControlState.READY_FOR_RECONNECTION, allowed_from=frozenset({ControlState.DISCONNECTED}))

    def press_button(self) -> bool:
        """The customer closes an armed switch; the button does nothing otherwise."""
        return self._move(ControlState.CONNECTED, allowed_from=frozenset({ControlState.READY_FOR_RECONNECTION}))


class GatewaySite(Protocol):
    """What the gateway needs from the meter around it (the simulated meter implements it)."""

    def meter_time(self) -> datetime:
        """The meter's clock (aware UTC): validity windows are judged by it, as a real meter would."""
        ...

    def measure(self) -> tuple[float, float, float]:
        """(supply voltage V, current A, load-side voltage V) now."""
        ...

    def switch_changed(self, state: ControlState, counter: int | None) -> None:
        """The switch moved (``counter``: the command that moved it)."""
        ...

    def limit_changed(self, counter: int) -> None:
        """A limit was set or cancelled (the meter checks its demand against it now)."""
        ...

    def ignore_disconnects_changed(self, on: bool, counter: int) -> None: ...

    def refused(self, record: RefusalRecord) -> None:
        """A command was refused (the meter reports it)."""
        ...


class SignedCommandGateway(CosemObject):
    """Signed Command Gateway (class_id 200, version 0): verifies and executes signed commands."""

    class_id = GATEWAY_CLASS_ID
    attribute_count = 5
    method_count = 1
    writable = frozenset()

    def __init__(
        self,
        logical_name: Obis,
        *,
        system_title: bytes,
        certificate: bytes | None,
        disconnect: SignedDisconnectControl,
        limiter: Limiter,
        site: GatewaySite,
        last_counter: int = 0,
    ) -> None:
        """``certificate``: DER of the pinned authority certificate (EncodeError if it holds no P-256 key)."""
        super().__init__(logical_name)
        self.system_title = system_title
        self.certificate = certificate
        self._public_key = None if certificate is None else public_key_from_certificate(certificate)
        self.disconnect = disconnect
        self.limiter = limiter
        self.site = site
        self.last_counter = last_counter
        """Kept in the meter's non-volatile memory: a command at or below it is refused as replayed."""
        self.last_refusal: RefusalRecord | None = None
        self.ignore_disconnects = False
        self._handlers: dict[Command, Callable[[Envelope], None]] = {
            Command.DISCONNECT: lambda e: self._switch(self.disconnect.open, e.counter),
            Command.RECONNECT: lambda e: self._switch(self.disconnect.close, e.counter),
            Command.ARM_RECONNECT: lambda e: self._switch(self.disconnect.arm, e.counter),
            Command.SET_LIMIT: self._set_limit,
            Command.CANCEL_LIMIT: self._cancel_limit,
            Command.IGNORE_DISCONNECTS_ON: lambda e: self._ignore(True, e.counter),
            Command.IGNORE_DISCONNECTS_OFF: lambda e: self._ignore(False, e.counter),
        }

    def _get(self, attribute: int, view: AssociationView, selector: int | None, parameters: Value) -> Value:
        if attribute == 2:
            return None if self.certificate is None else authority_fingerprint(self.certificate)
        if attribute == 3:
            return Long64Unsigned(self.last_counter)
        if attribute == 4:
            return None if self.last_refusal is None else self.last_refusal.to_data()
        return self.ignore_disconnects

    def _action(self, method: int, parameters: Value, view: AssociationView) -> Value:
        return self.execute(parameters)

    def execute(self, parameters: Value) -> Value:
        """Method 1: verify, act, confirm; refusals raise CosemAccessError after recording the reason."""
        public_key = self._public_key
        if public_key is None:
            raise self._refuse(Refusal.NOT_SUPPORTED, None, Result.TEMPORARY_FAILURE)
        try:
            signed = SignedCommand.from_parameters(parameters)
        except DecodeError:
            raise self._refuse(Refusal.MALFORMED, None, Result.READ_WRITE_DENIED) from None
        try:
            envelope = verify_signed_command(
                signed,
                public_key=public_key,
                own_title=self.system_title,
                last_counter=self.last_counter,
                now=self.site.meter_time(),
            )
        except CommandRefused as exc:
            raise self._refuse(exc.reason, exc.counter, Result.READ_WRITE_DENIED) from None
        if self.ignore_disconnects and envelope.command in _OPENING_COMMANDS:
            raise self._refuse(Refusal.IGNORING_DISCONNECTS, envelope.counter, Result.TEMPORARY_FAILURE)
        self.last_counter = envelope.counter  # accepted: from now on it can never be replayed
        self._handlers[envelope.command](envelope)
        return self.confirmation().to_data()

    def confirmation(self) -> Confirmation:
        """The switch and limiter state, measured now."""
        voltage, current, load_side = self.site.measure()
        return Confirmation(
            output_state=self.disconnect.output_state,
            control_state=int(self.disconnect.control_state),
            voltage_v=voltage,
            current_a=current,
            load_side_voltage_v=load_side,
            active_threshold_w=self.limiter.threshold_active,
        )

    def _refuse(self, reason: Refusal, counter: int | None, result: Result) -> CosemAccessError:
        record = RefusalRecord(counter, reason, self.site.meter_time())
        self.last_refusal = record
        self.site.refused(record)
        return CosemAccessError(result, f"command refused: {reason.name}")

    def _switch(self, move: Callable[[], bool], counter: int) -> None:
        if move():
            self.site.switch_changed(self.disconnect.control_state, counter)

    def _set_limit(self, envelope: Envelope) -> None:
        if envelope.limit is None:  # decode_envelope guarantees it for SET_LIMIT; kept for the type
            return
        self.limiter.set_limit(envelope.limit)
        self.site.limit_changed(envelope.counter)

    def _cancel_limit(self, envelope: Envelope) -> None:
        self.limiter.cancel()
        self.site.limit_changed(envelope.counter)

    def _ignore(self, on: bool, counter: int) -> None:
        if self.ignore_disconnects != on:
            self.ignore_disconnects = on
            self.site.ignore_disconnects_changed(on, counter)
