"""The head-end's DLMS/COSEM client: one association with one meter, as an async context manager.

    settings = ClientSettings.management(host, 4059, system_title=..., guek=..., gak=...,
                                         invocation_counter=stored_ic)
    async with DlmsClient(settings) as meter:
        value, unit = await meter.read_register("1.0.1.8.0.255")
        rows = await meter.read_profile("1.0.99.1.0.255", start, end)
    store(meter.client_invocation_counter, meter.server_invocation_counter)

The protocol work (AARQ/AARE, HLS-GMAC, ciphering, counters, GET blocks) is the sans-IO
``ClientConnection``'s; this module adds the TCP transport (``aio``), a timeout per request (from
sending it to its complete answer, blocks included) and typed results and errors: every failure
is a ``DlmsError`` (``AssociationRejectedError`` with its diagnostic, ``HlsAuthenticationError``,
``ServiceError`` with the data-access-result, ``ExceptionResponseError``, ``DlmsTimeoutError``,
``ConnectionClosedError``, or a codec/security error). After a timeout or a security failure the
connection is closed: its state can no longer be trusted.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from types import TracebackType
from typing import Self, TypeVar

from openami.protocols.dlms.aio import ClientStream, open_stream
from openami.protocols.dlms.apdu import (
    ActionRequestNormal,
    ActionResponseNormal,
    ActionResult,
    AttributeDescriptor,
    DataAccessResult,
    ExceptionResponse,
    ExceptionServiceError,
    GetRequestNormal,
    GetRequestWithList,
    GetResponseNormal,
    GetResponseWithList,
    MethodDescriptor,
    SelectiveAccess,
    SetRequestNormal,
    SetResponseNormal,
)
from openami.protocols.dlms.axdr import Array, Data, Structure
from openami.protocols.dlms.client_connection import (
    Associate,
    Associated,
    AssociationRejected,
    ClientConnection,
    ClientEvent,
    ClientSettings,
    ClientState,
    Release,
    Released,
    Request,
    Response,
    ResponseApdu,
)
from openami.protocols.dlms.cosem.profile import CaptureObject, parse_time
from openami.protocols.dlms.cosem_time import CosemDateTime
from openami.protocols.dlms.errors import DlmsError, ProtocolStateError
from openami.protocols.dlms.obis import CLOCK, Obis
from openami.protocols.dlms.profile_rows import ProfileRow, decode_profile_rows
from openami.protocols.dlms.session_errors import (
    AssociationRejectedError,
    ConnectionClosedError,
    ExceptionResponseError,
    ServiceError,
)
from openami.protocols.dlms.xdlms import Conformance

__all__ = ["ClientSettings", "DlmsClient", "ProfileRow", "decode_profile_rows", "range_access"]

_R = TypeVar("_R")

_DIAGNOSTICS = {
    1: "no reason given (wrong keys or a tampered request)",
    2: "application context not supported (ciphering required?)",
    3: "calling AP title not recognised",
    11: "authentication mechanism not recognised",
    12: "authentication mechanism required",
    13: "authentication failure",
    14: "authentication required",
}


def _obis(name: Obis | str) -> Obis:
    return name if isinstance(name, Obis) else Obis.parse(name)


def range_access(clock_column: CaptureObject, start: datetime, end: datetime) -> SelectiveAccess:
    """Selective access by range (selector 1): rows with clock in [start, end], all columns."""
    return SelectiveAccess(
        1,
        Structure(
            (
                clock_column.to_data(),
                CosemDateTime.from_datetime(start).to_bytes(),
                CosemDateTime.from_datetime(end).to_bytes(),
                Array(),
            )
        ),
    )


class DlmsClient:
    """An association with one meter over TCP (IEC 62056-47 wrapper); use ``async with``."""

    def __init__(self, settings: ClientSettings, *, challenge: bytes | None = None) -> None:
        self.settings = settings
        self._connection = ClientConnection(settings, challenge=challenge)
        self._stream: ClientStream | None = None
        self._columns: dict[Obis, tuple[CaptureObject, ...]] = {}

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close(release=exc is None)

    # ------------------------------------------------------------------------------ state

    @property
    def client_invocation_counter(self) -> int:
        """The next invocation counter the client will use; persist it after each session."""
        return self._connection.client_invocation_counter

    @property
    def server_invocation_counter(self) -> int:
        """The last invocation counter accepted from the meter (-1: none); persist it too."""
        return self._connection.server_invocation_counter

    @property
    def conformance(self) -> Conformance:
        return self._connection.conformance

    @property
    def max_pdu_size(self) -> int:
        return self._connection.max_pdu_size

    @property
    def server_system_title(self) -> bytes | None:
        return self._connection.server_system_title

    @property
    def associated(self) -> bool:
        return self._connection.state is ClientState.ASSOCIATED

    # ------------------------------------------------------------------------------ association

    async def connect(self) -> None:
        """Open TCP and establish the association (HLS passes included): ``open`` then ``associate``.

        Raises AssociationRejectedError (with the AARE diagnostic), HlsAuthenticationError,
        DlmsTimeoutError, ConnectionClosedError or another DlmsError.
        """
        await self.open()
        await self.associate()

    async def open(self) -> None:
        """Open the TCP connection only (DlmsTimeoutError, ConnectionClosedError): a caller that limits
        how many sessions work at once can let the waiting for silent meters happen outside the limit."""
        s = self.settings
        self._stream = await open_stream(s.host, s.port, connect_timeout_s=s.timeout_s)

    async def associate(self) -> None:
        """Establish the association on the open connection (raises as ``connect``)."""
        event = await self._exchange(self._connection.send(Associate()))
        if isinstance(event, AssociationRejected):
            self._close_stream()
            reason = _DIAGNOSTICS.get(event.diagnostic, "see the diagnostic")
            raise AssociationRejectedError(
                f"association rejected (result {event.result}, diagnostic {event.diagnostic}: {reason})",
                result=event.result,
                diagnostic=event.diagnostic,
            )
        if not isinstance(event, Associated):
            raise ProtocolStateError(f"{type(event).__name__} in answer to the AARQ")

    async def release(self) -> None:
        """Release the association (RLRQ/RLRE); the TCP connection stays open."""
        event = await self._exchange(self._connection.send(Release()))
        if not isinstance(event, Released):
            raise ProtocolStateError(f"{type(event).__name__} in answer to the RLRQ")

    async def close(self, *, release: bool = True) -> None:
        """Release (when associated and ``release``) and close TCP; never raises."""
        try:
            if release and self.associated and self._stream is not None and not self._stream.closed:
                await self.release()
        except DlmsError:
            pass  # closing anyway: a meter that does not answer the RLRQ is still released by the close
        finally:
            self._close_stream()

    # ------------------------------------------------------------------------------ services

    async def get(
        self,
        obis: Obis | str,
        class_id: int,
        attribute: int,
        selective_access: SelectiveAccess | None = None,
        *,
        raw: bool = False,
    ) -> Data:
        """GET one attribute; raises ServiceError with the data-access-result when refused.

        ``raw``: return the value still A-XDR encoded (an ``EncodedData``) for a specialised decoder.
        """
        descriptor = AttributeDescriptor(class_id, _obis(obis), attribute)
        response = await self._request(GetRequestNormal(descriptor, selective_access), GetResponseNormal, raw=raw)
        if isinstance(response.result, DataAccessResult):
            raise ServiceError(f"GET {_describe(descriptor)}: {response.result.name.lower()}", result=response.result)
        return response.result

    async def get_with_list(
        self, items: Sequence[tuple[Obis | str, int, int] | tuple[Obis | str, int, int, SelectiveAccess | None]]
    ) -> list[Data | DataAccessResult]:
        """GET several attributes in one request; each result is a value or its DataAccessResult."""
        requested = tuple(
            (AttributeDescriptor(item[1], _obis(item[0]), item[2]), item[3] if len(item) == 4 else None)
            for item in items
        )
        response = await self._request(GetRequestWithList(requested), GetResponseWithList)
        if len(response.results) != len(requested):
            raise ProtocolStateError(f"{len(response.results)} results for {len(requested)} attributes")
        return list(response.results)

    async def set(self, obis: Obis | str, class_id: int, attribute: int, value: Data) -> None:
        """SET one attribute; raises ServiceError with the data-access-result when refused."""
        descriptor = AttributeDescriptor(class_id, _obis(obis), attribute)
        response = await self._request(SetRequestNormal(descriptor, value), SetResponseNormal)
        if response.result != DataAccessResult.SUCCESS:
            raise ServiceError(f"SET {_describe(descriptor)}: {response.result.name.lower()}", result=response.result)

    async def action(self, obis: Obis | str, class_id: int, method: int, parameters: Data = None) -> Data:
        """Invoke a method (``parameters`` None: none sent); returns its return data or None.

        Raises ServiceError with the action-result when refused.
        """
        descriptor = MethodDescriptor(class_id, _obis(obis), method)
        response = await self._request(ActionRequestNormal(descriptor, parameters), ActionResponseNormal)
        if response.result != ActionResult.SUCCESS:
            raise ServiceError(
                f"ACTION {_describe(descriptor)}: {response.result.name.lower()}", result=response.result
            )
        if isinstance(response.return_data, DataAccessResult):
            raise ServiceError(f"ACTION {_describe(descriptor)} return data: {response.return_data.name.lower()}",
                               result=response.return_data)  # fmt: skip
        return response.return_data

    # ------------------------------------------------------------------------------ typed reads

    async def read_clock(self, obis: Obis | str = CLOCK) -> datetime:
        """The meter's clock (class 8, attribute 2) as an aware UTC datetime."""
        return parse_time(await self.get(obis, 8, 2))

    async def read_register(self, obis: Obis | str) -> tuple[int | float, int]:
        """A Register's (value * 10**scaler, unit) in one GET-with-list (value and scaler_unit)."""
        value, scaler_unit = await self.get_with_list([(obis, 3, 2), (obis, 3, 3)])
        for item, name in ((value, "value"), (scaler_unit, "scaler_unit")):
            if isinstance(item, DataAccessResult):
                raise ServiceError(f"GET register {obis} {name}: {item.name.lower()}", result=item)
        if not isinstance(value, int | float) or not (isinstance(scaler_unit, tuple) and len(scaler_unit) == 2):
            raise ProtocolStateError(f"register {obis} answered a value or scaler_unit of the wrong type")
        scaler, unit = scaler_unit
        if not isinstance(scaler, int) or not isinstance(unit, int):
            raise ProtocolStateError(f"register {obis} scaler_unit is not {{integer, enum}}")
        scaled: int | float = (
            int(value) * 10**scaler if scaler >= 0 and isinstance(value, int) else value * 10.0**scaler
        )
        return scaled, int(unit)

    async def profile_columns(self, obis: Obis | str) -> tuple[CaptureObject, ...]:
        """A Profile Generic's capture_objects (attribute 3), read once per association."""
        name = _obis(obis)
        if name not in self._columns:
            captured = await self.get(name, 7, 3)
            if not isinstance(captured, list):
                raise ProtocolStateError(f"capture_objects of {name} is not an array")
            self._columns[name] = tuple(CaptureObject.from_data(item) for item in captured)
        return self._columns[name]

    async def read_profile(
        self, obis: Obis | str, start: datetime, end: datetime, *, columns: Sequence[CaptureObject] | None = None
    ) -> list[ProfileRow]:
        """Rows with clock in [start, end] (both inclusive), by range selective access.

        Each row is (clock as aware UTC datetime, the other columns in capture order, raw A-XDR
        values). ``columns`` are the profile's capture_objects when already known (e.g. cached per
        meter model); otherwise they are read once per association. Raises ProtocolStateError when
        the profile has no clock column.
        """
        if columns is None:
            columns = await self.profile_columns(obis)
        clock_index = next((i for i, c in enumerate(columns) if c.is_clock), None)
        if clock_index is None:
            raise ProtocolStateError(f"profile {obis} has no clock column to select a range by")
        buffer = await self.get(obis, 7, 2, range_access(columns[clock_index], start, end), raw=True)
        return decode_profile_rows(buffer, clock_index)

    # ------------------------------------------------------------------------------ plumbing

    async def _request(self, request: Request, expected: type[_R], *, raw: bool = False) -> _R:
        event = await self._exchange(self._connection.send(request, raw=raw))
        if not isinstance(event, Response):
            raise ProtocolStateError(f"{type(event).__name__} in answer to a request")
        apdu: ResponseApdu = event.apdu
        if isinstance(apdu, ExceptionResponse):
            expected_ic = apdu.invocation_counter
            if apdu.service_error == ExceptionServiceError.INVOCATION_COUNTER_ERROR:
                message = f"the meter refused our invocation counter; it expects {expected_ic}"
            else:
                message = f"exception-response (state-error {apdu.state_error}, service-error {apdu.service_error})"
            raise ExceptionResponseError(
                message, state_error=apdu.state_error, service_error=apdu.service_error, expected_ic=expected_ic
            )
        if not isinstance(apdu, expected):
            raise ProtocolStateError(f"{type(apdu).__name__} where {expected.__name__} was expected")
        return apdu

    async def _exchange(self, data: bytes) -> ClientEvent:
        """Write ``data`` and return the next event, within the request timeout.

        The stream feeds the connection as bytes arrive and writes its follow-ups (HLS pass 3,
        get-request-next) itself, so a block transfer wakes this coroutine once, at the end.
        """
        stream = self._stream
        if stream is None or stream.closed:
            raise ConnectionClosedError("not connected to the meter")
        try:
            return await stream.exchange(self._connection, data, self.settings.timeout_s)
        except DlmsError:
            self._close_stream()  # after a timeout or a security failure the association is unusable
            raise

    def _close_stream(self) -> None:
        if self._stream is not None:
            self._stream.close()


def _describe(descriptor: AttributeDescriptor | MethodDescriptor) -> str:
    index = descriptor.attribute_id if isinstance(descriptor, AttributeDescriptor) else descriptor.method_id
    return f"{descriptor.class_id}/{descriptor.instance_id}/{index}"
