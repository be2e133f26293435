"""What every COSEM interface class shares in the server role (IEC 62056-6-2, clause 4.1; Blue Book).

An object is addressed by class id and logical name (OBIS); its attributes are numbered from 1
(attribute 1 is always ``logical_name``) and its methods from 1. An object answers GET, SET and
ACTION for one request at a time; anything it refuses is a :class:`CosemAccessError` carrying the
data-access-result (or action-result) code the server puts on the wire, never a crash.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar, Protocol, TypeAlias

from openami.protocols.dlms.axdr import Data
from openami.protocols.dlms.errors import DlmsError
from openami.protocols.dlms.obis import Obis

__all__ = [
    "AccessRights",
    "AssociationView",
    "AttributeAccess",
    "CosemAccessError",
    "CosemObject",
    "MethodAccess",
    "Result",
    "Value",
]

Value: TypeAlias = Data
"""An A-XDR value as ``openami.protocols.dlms.axdr`` encodes and decodes it."""


class Result(enum.IntEnum):
    """Data-access-result / action-result codes (IEC 62056-5-3, clause 8.3, Data-Access-Result)."""

    SUCCESS = 0
    HARDWARE_FAULT = 1
    TEMPORARY_FAILURE = 2
    READ_WRITE_DENIED = 3
    OBJECT_UNDEFINED = 4
    OBJECT_CLASS_INCONSISTENT = 9
    OBJECT_UNAVAILABLE = 11
    TYPE_UNMATCHED = 12
    SCOPE_OF_ACCESS_VIOLATED = 13
    DATA_BLOCK_UNAVAILABLE = 14
    OTHER_REASON = 250


class AttributeAccess(enum.IntEnum):
    """attribute_access_item.access_mode (Blue Book, Association LN version 1+)."""

    NO_ACCESS = 0
    READ_ONLY = 1
    WRITE_ONLY = 2
    READ_AND_WRITE = 3
    AUTHENTICATED_READ_ONLY = 4
    AUTHENTICATED_WRITE_ONLY = 5
    AUTHENTICATED_READ_AND_WRITE = 6

    @property
    def readable(self) -> bool:
        return self in _READABLE

    @property
    def writable(self) -> bool:
        return self in _WRITABLE


_READABLE = frozenset(
    {
        AttributeAccess.READ_ONLY,
        AttributeAccess.READ_AND_WRITE,
        AttributeAccess.AUTHENTICATED_READ_ONLY,
        AttributeAccess.AUTHENTICATED_READ_AND_WRITE,
    }
)
_WRITABLE = frozenset(
    {
        AttributeAccess.WRITE_ONLY,
        AttributeAccess.READ_AND_WRITE,
        AttributeAccess.AUTHENTICATED_WRITE_ONLY,
        AttributeAccess.AUTHENTICATED_READ_AND_WRITE,
    }
)


class MethodAccess(enum.IntEnum):
    """method_access_item.access_mode (Blue Book, Association LN version 1+)."""

    NO_ACCESS = 0
    ACCESS = 1
    AUTHENTICATED_ACCESS = 2


@dataclass(frozen=True, slots=True)
class AccessRights:
    """What one client may do with one object: modes by attribute id and by method id.

    Attributes or methods missing from the mappings have no access.
    """

    attributes: Mapping[int, AttributeAccess] = field(default_factory=dict)
    methods: Mapping[int, MethodAccess] = field(default_factory=dict)

    def may_read(self, attribute: int) -> bool:
        return self.attributes.get(attribute, AttributeAccess.NO_ACCESS).readable

    def may_write(self, attribute: int) -> bool:
        return self.attributes.get(attribute, AttributeAccess.NO_ACCESS).writable

    def may_invoke(self, method: int) -> bool:
        return self.methods.get(method, MethodAccess.NO_ACCESS) != MethodAccess.NO_ACCESS


class CosemAccessError(DlmsError):
    """An object refuses a GET, SET or ACTION; ``result`` is the code to answer with."""

    def __init__(self, result: Result, message: str = "") -> None:
        super().__init__(message or result.name.lower().replace("_", "-"))
        self.result = result


class AssociationView(Protocol):
    """What an object may know of the association a request arrives on (the server session)."""

    @property
    def client_sap(self) -> int: ...

    @property
    def client_system_title(self) -> bytes | None: ...

    @property
    def now(self) -> datetime:
        """The request's reception time, aware UTC (real time, not the meter's possibly drifting clock)."""
        ...

    def rights_for(self, obj: CosemObject) -> AccessRights:
        """This client's rights on one object (no access at all for an object it may not see)."""
        ...

    def visible_objects(self) -> Sequence[tuple[CosemObject, AccessRights]]:
        """The objects this client can see, with its rights on each (Association LN object_list)."""
        ...

    def association_info(self) -> AssociationInfo:
        """Context, mechanism, negotiated xDLMS parameters and status of this association."""
        ...

    def reply_to_hls(self, f_stoc: bytes) -> bytes:
        """HLS pass 3/4: check the client's f(StoC), return f(CtoS); CosemAccessError if it fails."""
        ...


@dataclass(frozen=True, slots=True)
class AssociationInfo:
    """The parts of an established association an Association LN object publishes."""

    server_sap: int
    context_id: int
    mechanism_id: int
    conformance: int
    max_receive_pdu_size: int
    max_send_pdu_size: int
    status: int
    """0 non-associated, 1 association-pending (HLS not finished), 2 associated."""


class CosemObject:
    """Base of the interface classes: attribute 1, bounds checks, default refusals.

    Subclasses set ``class_id``, ``version``, ``attribute_count``, ``method_count`` and
    ``writable`` and override :meth:`_get`, :meth:`_set` and :meth:`_action`.
    """

    class_id: ClassVar[int]
    version: ClassVar[int] = 0
    attribute_count: ClassVar[int] = 1
    method_count: ClassVar[int] = 0
    writable: ClassVar[frozenset[int]] = frozenset()
    selectors: ClassVar[Mapping[int, tuple[int, ...]]] = {}
    """Selective access selectors supported, by attribute id."""

    def __init__(self, logical_name: Obis) -> None:
        self.logical_name = logical_name

    @property
    def key(self) -> tuple[int, bytes]:
        """(class id, 6-byte logical name): how a logical device indexes its objects."""
        return (self.class_id, self.logical_name.to_bytes())

    def writable_attributes(self) -> frozenset[int]:
        """The attributes a client with full rights may SET."""
        return self.writable

    def natural_rights(self) -> AccessRights:
        """Full access as the class allows it: read everything, write the writable, invoke every method."""
        writable = self.writable_attributes()
        attributes = {
            i: AttributeAccess.READ_AND_WRITE if i in writable else AttributeAccess.READ_ONLY
            for i in range(1, self.attribute_count + 1)
        }
        methods = {i: MethodAccess.ACCESS for i in range(1, self.method_count + 1)}
        return AccessRights(attributes, methods)

    def get(
        self, attribute: int, view: AssociationView, selector: int | None = None, parameters: Value = None
    ) -> Value:
        """Read an attribute (with optional selective access); raises CosemAccessError."""
        self._check_attribute(attribute)
        if selector is not None and selector not in self.selectors.get(attribute, ()):
            raise CosemAccessError(Result.OTHER_REASON, f"selector {selector} not supported")
        if attribute == 1:
            return self.logical_name.to_bytes()
        return self._get(attribute, view, selector, parameters)

    def set(self, attribute: int, value: Value, view: AssociationView) -> None:
        """Write an attribute; raises CosemAccessError (read-write-denied for read-only ones)."""
        self._check_attribute(attribute)
        if attribute not in self.writable_attributes():
            raise CosemAccessError(Result.READ_WRITE_DENIED)
        self._set(attribute, value, view)

    def action(self, method: int, parameters: Value, view: AssociationView) -> Value:
        """Invoke a method; returns its return data (None when it has none); raises CosemAccessError."""
        if not 1 <= method <= self.method_count:
            raise CosemAccessError(Result.OBJECT_UNDEFINED, f"no method {method}")
        return self._action(method, parameters, view)

    def _check_attribute(self, attribute: int) -> None:
        if not 1 <= attribute <= self.attribute_count:
            raise CosemAccessError(Result.OBJECT_UNDEFINED, f"no attribute {attribute}")

    def _get(self, attribute: int, view: AssociationView, selector: int | None, parameters: Value) -> Value:
        raise CosemAccessError(Result.OBJECT_UNAVAILABLE)

    def _set(self, attribute: int, value: Value, view: AssociationView) -> None:
        raise CosemAccessError(Result.READ_WRITE_DENIED)

    def _action(self, method: int, parameters: Value, view: AssociationView) -> Value:
        raise CosemAccessError(Result.OTHER_REASON, f"method {method} not implemented")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.logical_name})"


def require(condition: bool, message: str = "type unmatched") -> None:
    """Refuse a SET or ACTION argument of the wrong type or range (data-access-result type-unmatched)."""
    if not condition:
        raise CosemAccessError(Result.TYPE_UNMATCHED, message)


def as_int(value: Value, low: int, high: int, what: str) -> int:
    """An integer argument within [low, high] (any A-XDR integer width), else type-unmatched."""
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise CosemAccessError(Result.TYPE_UNMATCHED, f"{what} must be an integer {low}..{high}")
    return int(value)


def as_bytes(value: Value, what: str, length: int | None = None) -> bytes:
    """An octet-string argument (of ``length`` bytes when given), else type-unmatched."""
    if not isinstance(value, bytes) or (length is not None and len(value) != length):
        raise CosemAccessError(Result.TYPE_UNMATCHED, f"{what} must be an octet-string")
    return value
