"""A logical device: COSEM objects by (class id, logical name), and GET/SET/ACTION dispatch.

Dispatch never raises: an unknown object answers object-undefined, an object the client may not
use answers read-write-denied, and whatever an object refuses comes back as its own result code
(IEC 62056-5-3, clause 8.3, Data-Access-Result / Action-Result).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from openami.protocols.dlms.cosem.base import AssociationView, CosemAccessError, CosemObject, Result, Value
from openami.protocols.dlms.errors import DlmsError
from openami.protocols.dlms.obis import Obis

__all__ = ["LogicalDevice", "Outcome"]

Outcome = tuple[Result, Value]
"""(result, value): the value is meaningful only when the result is SUCCESS."""

_T = TypeVar("_T", bound=CosemObject)


class LogicalDevice:
    """A server's logical device (address 1 = the management logical device)."""

    def __init__(self, objects: Iterable[CosemObject] = (), *, address: int = 1) -> None:
        self.address = address
        self._objects: dict[tuple[int, bytes], CosemObject] = {}
        for obj in objects:
            self.add(obj)

    def add(self, obj: _T) -> _T:
        """Add an object (replacing one with the same class id and logical name); returns it."""
        self._objects[obj.key] = obj
        return obj

    def find(self, class_id: int, logical_name: Obis | bytes) -> CosemObject | None:
        name = logical_name if isinstance(logical_name, bytes) else logical_name.to_bytes()
        return self._objects.get((class_id, name))

    def __iter__(self) -> Iterator[CosemObject]:
        return iter(self._objects.values())

    def __len__(self) -> int:
        return len(self._objects)

    def get(
        self,
        view: AssociationView,
        class_id: int,
        logical_name: bytes,
        attribute: int,
        selection: tuple[int, Value] | None = None,
    ) -> Outcome:
        """GET one attribute (``selection`` = (selector, parameters) for selective access)."""
        obj, denied = self._lookup(view, class_id, logical_name)
        if obj is None:
            return denied, None
        if not view.rights_for(obj).may_read(attribute):
            return _unknown_or(obj, attribute, Result.READ_WRITE_DENIED), None
        selector, parameters = selection if selection is not None else (None, None)
        return _guarded(lambda: obj.get(attribute, view, selector, parameters))

    def set(self, view: AssociationView, class_id: int, logical_name: bytes, attribute: int, value: Value) -> Result:
        """SET one attribute; returns the data-access-result."""
        obj, denied = self._lookup(view, class_id, logical_name)
        if obj is None:
            return denied
        if not view.rights_for(obj).may_write(attribute):
            return _unknown_or(obj, attribute, Result.READ_WRITE_DENIED)

        def write() -> Value:
            obj.set(attribute, value, view)
            return None

        return _guarded(write)[0]

    def action(
        self, view: AssociationView, class_id: int, logical_name: bytes, method: int, parameters: Value
    ) -> Outcome:
        """Invoke a method; returns (action-result, return data or None)."""
        obj, denied = self._lookup(view, class_id, logical_name)
        if obj is None:
            return denied, None
        if not view.rights_for(obj).may_invoke(method):
            known = 1 <= method <= obj.method_count
            return (Result.READ_WRITE_DENIED if known else Result.OBJECT_UNDEFINED), None
        return _guarded(lambda: obj.action(method, parameters, view))

    def _lookup(self, view: AssociationView, class_id: int, logical_name: bytes) -> tuple[CosemObject | None, Result]:
        obj = self._objects.get((class_id, logical_name))
        if obj is None:
            return None, Result.OBJECT_UNDEFINED
        return obj, Result.SUCCESS


def _unknown_or(obj: CosemObject, attribute: int, result: Result) -> Result:
    return result if 1 <= attribute <= obj.attribute_count else Result.OBJECT_UNDEFINED


def _guarded(call: Callable[[], Value]) -> Outcome:
    try:
        return Result.SUCCESS, call()
    except CosemAccessError as exc:
        return exc.result, None
    except DlmsError:
        return Result.TYPE_UNMATCHED, None
    except Exception:  # noqa: BLE001 - request boundary: an object's bug answers, it never kills the server
        return Result.OTHER_REASON, None
