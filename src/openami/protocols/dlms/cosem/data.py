"""Data (class 1) and Register (class 3) interface classes (Blue Book, clauses 4.3.1 and 4.3.2)."""

from __future__ import annotations

from collections.abc import Callable

from openami.protocols.dlms.axdr import Enum, Integer, Structure
from openami.protocols.dlms.cosem.base import AssociationView, CosemAccessError, CosemObject, Result, Value
from openami.protocols.dlms.obis import Obis

__all__ = ["Data", "Register"]


class Data(CosemObject):
    """Data (class_id 1, version 0): attribute 2 ``value``, any A-XDR type.

    The value is either stored (``value``) or computed on each read by ``source`` (for a counter
    or a serial number kept elsewhere); ``writable`` lets a client SET a stored value.
    """

    class_id = 1
    attribute_count = 2

    def __init__(
        self,
        logical_name: Obis,
        value: Value = None,
        *,
        source: Callable[[], Value] | None = None,
        writable: bool = False,
    ) -> None:
        super().__init__(logical_name)
        self.value = value
        self._source = source
        self._writable = writable and source is None

    def writable_attributes(self) -> frozenset[int]:
        return frozenset({2}) if self._writable else frozenset()

    def _get(self, attribute: int, view: AssociationView, selector: int | None, parameters: Value) -> Value:
        return self._source() if self._source is not None else self.value

    def _set(self, attribute: int, value: Value, view: AssociationView) -> None:
        if self.value is not None and type(value) is not type(self.value):
            raise CosemAccessError(Result.TYPE_UNMATCHED)
        self.value = value


class Register(CosemObject):
    """Register (class_id 3, version 0): 2 ``value``, 3 ``scaler_unit`` {integer scaler, enum unit}.

    The physical quantity is ``value * 10 ** scaler`` in ``unit`` (Blue Book unit table: 30 = Wh,
    32 = varh, 27 = W, 35 = V, 33 = A). ``source`` computes the value on each read. Method 1
    ``reset`` is not offered.
    """

    class_id = 3
    attribute_count = 3
    method_count = 1

    def __init__(
        self,
        logical_name: Obis,
        *,
        scaler: int,
        unit: int,
        value: Value = None,
        source: Callable[[], Value] | None = None,
    ) -> None:
        super().__init__(logical_name)
        self.scaler = scaler
        self.unit = unit
        self.value = value
        self._source = source

    def scaler_unit(self) -> Structure:
        """The ``scaler_unit`` attribute value."""
        return Structure((Integer(self.scaler), Enum(self.unit)))

    def _get(self, attribute: int, view: AssociationView, selector: int | None, parameters: Value) -> Value:
        if attribute == 2:
            return self._source() if self._source is not None else self.value
        return self.scaler_unit()
