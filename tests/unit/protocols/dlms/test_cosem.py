"""COSEM interface classes in the server role, through the logical device's dispatch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from openami.protocols.dlms import axdr
from openami.protocols.dlms.axdr import (
    Array,
    DoubleLongUnsigned,
    Enum,
    Integer,
    Long,
    LongUnsigned,
    Structure,
    Unsigned,
)
from openami.protocols.dlms.cosem import (
    AccessRights,
    AssociationInfo,
    AssociationLN,
    AttributeAccess,
    Clock,
    ControlState,
    CosemAccessError,
    CosemObject,
    Data,
    DisconnectControl,
    LogicalDevice,
    MethodAccess,
    Register,
    Result,
    SecuritySetup,
)
from openami.protocols.dlms.cosem_time import CosemDateTime
from openami.protocols.dlms.obis import (
    ACTIVE_IMPORT,
    CLOCK,
    CURRENT_ASSOCIATION,
    DISCONNECT_CONTROL,
    SECURITY_SETUP,
    SERIAL,
    Obis,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@dataclass
class View:
    """An association as an object sees it: full rights unless ``rights`` says otherwise."""

    device: LogicalDevice
    rights: dict[tuple[int, bytes], AccessRights] | None = None
    client_sap: int = 1
    client_system_title: bytes | None = b"CLIENT01"
    now: datetime = NOW
    hls_replies: list[bytes] = field(default_factory=list)

    def rights_for(self, obj: CosemObject) -> AccessRights:
        if self.rights is None:
            return obj.natural_rights()
        return self.rights.get(obj.key, AccessRights())

    def visible_objects(self) -> Sequence[tuple[CosemObject, AccessRights]]:
        return [(o, r) for o in self.device if (r := self.rights_for(o)).attributes]

    def association_info(self) -> AssociationInfo:
        return AssociationInfo(1, 3, 5, 0x1C1F, 1024, 1024, 2)

    def reply_to_hls(self, f_stoc: bytes) -> bytes:
        if f_stoc != b"good":
            raise CosemAccessError(Result.OTHER_REASON)
        self.hls_replies.append(f_stoc)
        return b"f(CtoS)"


def _device() -> LogicalDevice:
    return LogicalDevice(
        [
            Clock(CLOCK, now=lambda: NOW),
            Data(SERIAL, "OAM00000001"),
            Register(ACTIVE_IMPORT, scaler=0, unit=30, value=DoubleLongUnsigned(12345)),
            DisconnectControl(DISCONNECT_CONTROL, control_mode=1),
            AssociationLN(CURRENT_ASSOCIATION),
            SecuritySetup(SECURITY_SETUP, server_system_title=b"OAM\x00\x00\x00\x00\x01"),
        ]
    )


def test_every_attribute_1_is_the_logical_name() -> None:
    device = _device()
    view = View(device)
    for obj in device:
        assert device.get(view, obj.class_id, obj.logical_name.to_bytes(), 1) == (
            Result.SUCCESS,
            bytes(obj.logical_name),
        )


def test_register_value_and_scaler_unit() -> None:
    device = _device()
    view = View(device)
    name = bytes(ACTIVE_IMPORT)
    assert device.get(view, 3, name, 2) == (Result.SUCCESS, DoubleLongUnsigned(12345))
    result, scaler_unit = device.get(view, 3, name, 3)
    assert result is Result.SUCCESS
    assert axdr.encode(scaler_unit) == bytes.fromhex("02020f00161e")


def test_unknown_obis_answers_object_undefined() -> None:
    device = _device()
    assert device.get(View(device), 3, bytes(Obis(1, 0, 99, 8, 0, 255)), 2) == (Result.OBJECT_UNDEFINED, None)


def test_wrong_class_id_for_a_known_obis_answers_object_undefined() -> None:
    device = _device()
    assert device.get(View(device), 1, bytes(ACTIVE_IMPORT), 2)[0] is Result.OBJECT_UNDEFINED


def test_unknown_attribute_answers_object_undefined() -> None:
    device = _device()
    assert device.get(View(device), 3, bytes(ACTIVE_IMPORT), 9)[0] is Result.OBJECT_UNDEFINED
    assert device.set(View(device), 3, bytes(ACTIVE_IMPORT), 0, Unsigned(1)) is Result.OBJECT_UNDEFINED


def test_object_without_rights_answers_read_write_denied() -> None:
    device = _device()
    view = View(device, rights={})
    assert device.get(view, 3, bytes(ACTIVE_IMPORT), 2)[0] is Result.READ_WRITE_DENIED
    assert device.action(view, 70, bytes(DISCONNECT_CONTROL), 1, Integer(0))[0] is Result.READ_WRITE_DENIED


def test_read_only_attribute_set_is_denied() -> None:
    device = _device()
    assert device.set(View(device), 3, bytes(ACTIVE_IMPORT), 2, DoubleLongUnsigned(1)) is Result.READ_WRITE_DENIED


def test_clock_time_is_a_12_byte_date_time_with_deviation() -> None:
    device = _device()
    result, value = device.get(View(device), 8, bytes(CLOCK), 2)
    assert result is Result.SUCCESS
    assert isinstance(value, bytes)
    assert CosemDateTime.from_bytes(value).to_datetime() == NOW


def test_clock_set_time_moves_the_offset() -> None:
    device = _device()
    clock = device.find(8, CLOCK)
    assert isinstance(clock, Clock)
    wanted = NOW + timedelta(minutes=5)
    assert (
        device.set(View(device), 8, bytes(CLOCK), 2, CosemDateTime.from_datetime(wanted).to_bytes()) is Result.SUCCESS
    )
    assert clock.time() == wanted


def test_clock_set_time_with_wrong_type_is_type_unmatched() -> None:
    device = _device()
    assert device.set(View(device), 8, bytes(CLOCK), 2, Unsigned(1)) is Result.TYPE_UNMATCHED
    assert device.set(View(device), 8, bytes(CLOCK), 2, b"\xff" * 12) is Result.TYPE_UNMATCHED


def test_clock_shift_time_method_6() -> None:
    device = _device()
    clock = device.find(8, CLOCK)
    assert isinstance(clock, Clock)
    assert device.action(View(device), 8, bytes(CLOCK), 6, Long(-30)) == (Result.SUCCESS, None)
    assert clock.time() == NOW - timedelta(seconds=30)
    assert device.action(View(device), 8, bytes(CLOCK), 6, Long(901))[0] is Result.TYPE_UNMATCHED


@pytest.mark.parametrize(
    ("mode", "after_reconnect"),
    [
        (1, ControlState.READY_FOR_RECONNECTION),
        (2, ControlState.CONNECTED),
        (3, ControlState.READY_FOR_RECONNECTION),
        (4, ControlState.CONNECTED),
        (5, ControlState.READY_FOR_RECONNECTION),
        (6, ControlState.READY_FOR_RECONNECTION),
    ],
)
def test_disconnect_control_remote_reconnect_arms_or_closes_by_mode(mode: int, after_reconnect: ControlState) -> None:
    device = _device()
    view = View(device)
    name = bytes(DISCONNECT_CONTROL)
    assert device.set(view, 70, name, 4, Enum(mode)) is Result.SUCCESS
    assert device.action(view, 70, name, 1, Integer(0)) == (Result.SUCCESS, None)
    assert device.get(view, 70, name, 2) == (Result.SUCCESS, False)
    assert device.get(view, 70, name, 3) == (Result.SUCCESS, Enum(ControlState.DISCONNECTED))
    assert device.action(view, 70, name, 2, Integer(0)) == (Result.SUCCESS, None)
    assert device.get(view, 70, name, 3) == (Result.SUCCESS, Enum(after_reconnect))
    assert device.get(view, 70, name, 2) == (Result.SUCCESS, after_reconnect is ControlState.CONNECTED)


def test_disconnect_control_mode_0_refuses_remote_control() -> None:
    device = _device()
    view = View(device)
    device.set(view, 70, bytes(DISCONNECT_CONTROL), 4, Enum(0))
    assert device.action(view, 70, bytes(DISCONNECT_CONTROL), 1, Integer(0))[0] is Result.TEMPORARY_FAILURE
    assert device.set(view, 70, bytes(DISCONNECT_CONTROL), 4, Enum(7)) is Result.TYPE_UNMATCHED


def test_unknown_method_answers_object_undefined() -> None:
    device = _device()
    assert device.action(View(device), 70, bytes(DISCONNECT_CONTROL), 3, Integer(0))[0] is Result.OBJECT_UNDEFINED


def test_association_object_list_shows_this_clients_rights() -> None:
    device = _device()
    clock, association = device.find(8, CLOCK), device.find(15, CURRENT_ASSOCIATION)
    assert clock is not None
    assert association is not None
    read_only = AccessRights({1: AttributeAccess.READ_ONLY, 2: AttributeAccess.READ_ONLY})
    view = View(device, rights={clock.key: read_only, association.key: read_only})
    result, object_list = device.get(view, 15, bytes(CURRENT_ASSOCIATION), 2)
    assert result is Result.SUCCESS
    assert isinstance(object_list, Array)
    assert [(e[0], e[2]) for e in object_list] == [
        (LongUnsigned(8), bytes(CLOCK)),
        (LongUnsigned(15), bytes(CURRENT_ASSOCIATION)),
    ]
    clock_rights = object_list[0][3]
    assert clock_rights[0][1] == Structure((Integer(2), Enum(AttributeAccess.READ_ONLY), None))
    assert clock_rights[0][2] == Structure((Integer(3), Enum(AttributeAccess.NO_ACCESS), None))
    assert axdr.decode_all(axdr.encode(object_list)) == object_list


def test_association_secret_is_never_readable() -> None:
    device = _device()
    assert device.get(View(device), 15, bytes(CURRENT_ASSOCIATION), 7)[0] is Result.READ_WRITE_DENIED


def test_association_reports_partners_context_and_status() -> None:
    device = _device()
    view = View(device)
    name = bytes(CURRENT_ASSOCIATION)
    assert device.get(view, 15, name, 3) == (Result.SUCCESS, Structure((Integer(1), LongUnsigned(1))))
    assert device.get(view, 15, name, 4)[1][-1] == Unsigned(3)
    assert device.get(view, 15, name, 6)[1][-1] == Unsigned(5)
    assert device.get(view, 15, name, 8) == (Result.SUCCESS, Enum(2))
    assert device.get(view, 15, name, 9) == (Result.SUCCESS, bytes(SECURITY_SETUP))


def test_reply_to_hls_authentication_delegates_to_the_association() -> None:
    device = _device()
    view = View(device)
    assert device.action(view, 15, bytes(CURRENT_ASSOCIATION), 1, b"good") == (Result.SUCCESS, b"f(CtoS)")
    assert device.action(view, 15, bytes(CURRENT_ASSOCIATION), 1, b"bad")[0] is Result.OTHER_REASON
    assert device.action(view, 15, bytes(CURRENT_ASSOCIATION), 1, Unsigned(1))[0] is Result.TYPE_UNMATCHED


def test_security_setup_publishes_policy_suite_and_titles() -> None:
    device = _device()
    view = View(device)
    name = bytes(SECURITY_SETUP)
    assert device.get(view, 64, name, 2) == (Result.SUCCESS, Enum(3))
    assert device.get(view, 64, name, 3) == (Result.SUCCESS, Enum(0))
    assert device.get(view, 64, name, 4) == (Result.SUCCESS, b"CLIENT01")
    assert device.get(view, 64, name, 5) == (Result.SUCCESS, b"OAM\x00\x00\x00\x00\x01")


def test_data_value_from_a_source_is_read_each_time() -> None:
    counter = iter(range(10))
    device = LogicalDevice([Data(Obis(0, 0, 43, 1, 1, 255), source=lambda: DoubleLongUnsigned(next(counter)))])
    view = View(device)
    assert device.get(view, 1, bytes(Obis(0, 0, 43, 1, 1, 255)), 2)[1] == 0
    assert device.get(view, 1, bytes(Obis(0, 0, 43, 1, 1, 255)), 2)[1] == 1


def test_object_bug_answers_other_reason_instead_of_crashing() -> None:
    def broken() -> None:
        raise RuntimeError("bug")

    device = LogicalDevice([Data(SERIAL, source=broken)])
    assert device.get(View(device), 1, bytes(SERIAL), 2) == (Result.OTHER_REASON, None)


def test_natural_rights_let_everything_be_read_and_writable_be_written() -> None:
    rights = Clock(CLOCK).natural_rights()
    assert rights.may_read(2)
    assert rights.may_write(2)
    assert not rights.may_write(4)
    assert rights.methods[6] is MethodAccess.ACCESS
