"""The server (meter) side of one DLMS/COSEM association, sans-IO: APDUs in, APDUs out.

IEC 62056-5-3 clause 9.4 and the Green Book security (clause 9.2):

- AARQ: the client SAP's policy decides (context, mechanism, ciphered glo-initiateRequest); the
  AARE rejects with the acse-service-user diagnostic (1 no reason / tampering, 2 context or
  ciphering, 3 no calling AP title, 11 mechanism not recognised, 12 mechanism required, 13
  authentication failure or stale counter) or accepts, with diagnostic 14 and the server
  challenge StoC when HLS-GMAC follows;
- HLS passes 3 and 4: until the client's f(StoC) verifies (ACTION reply_to_HLS_authentication,
  answered by the association object through :meth:`ServerConnection.reply_to_hls`) nothing but
  that action is served;
- data transfer: on a ciphered association every request must be glo-ciphered (else exception
  ``D8 01 01``), its tag must verify (else ``D8 01 05``) and its counter must be above the last
  accepted (else ``D8 01 06`` and the counter expected); the association stays usable after a
  refused request. GET answers longer than the negotiated PDU size go out as
  get-response-with-datablock, one block per get-request-next.
- RLRQ: RLRE normal, back to the idle state.

What the requests do is the :class:`RequestHandler`'s business (``server.ServerSession`` maps them
onto a logical device).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from openami.protocols.dlms.acse import (
    AARE,
    AARQ,
    RLRE,
    RLRQ,
    AcseServiceUserDiagnostic,
    AssociationResult,
    Mechanism,
)
from openami.protocols.dlms.apdu import (
    ActionRequestNormal,
    ActionResponseNormal,
    ActionResult,
    AttributeDescriptor,
    DataAccessResult,
    ExceptionResponse,
    ExceptionServiceError,
    ExceptionStateError,
    GetRequestNext,
    GetRequestNormal,
    GetRequestWithList,
    GetResponseNormal,
    GetResponseWithDataBlock,
    MethodDescriptor,
    SelectiveAccess,
    SetRequestNormal,
    SetResponseNormal,
    decode_apdu,
)
from openami.protocols.dlms.apdu_types import encode_get_data_result
from openami.protocols.dlms.axdr import Data, encode_length
from openami.protocols.dlms.connection import EncodedData, StateMachine
from openami.protocols.dlms.errors import DecodeError, DlmsError, ReplayError, SecurityError
from openami.protocols.dlms.obis import CURRENT_ASSOCIATION
from openami.protocols.dlms.security import (
    GENERAL_GLO_CIPHERING,
    glo_tag,
    plain_tag,
)
from openami.protocols.dlms.server_policy import ClientPolicy, ServerSecurity
from openami.protocols.dlms.xdlms import (
    ConfirmedServiceError,
    Conformance,
    InitiateErrorReason,
    InitiateRequest,
    InitiateResponse,
)

__all__ = ["SERVER_CONFORMANCE", "RequestHandler", "ServerConnection", "ServerState"]

SC_AUTHENTICATED_ENCRYPTED = 0x30
SERVER_CONFORMANCE = (
    Conformance.GET
    | Conformance.SET
    | Conformance.ACTION
    | Conformance.SELECTIVE_ACCESS
    | Conformance.BLOCK_TRANSFER_WITH_GET_OR_READ
    | Conformance.MULTIPLE_REFERENCES
)
"""What the server offers; the association gets its intersection with the client's proposal."""

_CIPHER_OVERHEAD = 1 + 3 + 1 + 4 + 12  # tag, length, SC, IC, authentication tag
_BLOCK_OVERHEAD = 4 + 4 + 1 + 3  # C4 02 iip last-block, block number, raw-data choice, length
_MIN_PDU = 64
_EXCEPTION_TAG = 0xD8
_DiagnosticT = AcseServiceUserDiagnostic


class RequestHandler(Protocol):
    """What the requests of an established association do (a logical device, usually)."""

    def get(self, descriptor: AttributeDescriptor, access: SelectiveAccess | None) -> Data | DataAccessResult: ...

    def set(self, descriptor: AttributeDescriptor, value: Data) -> DataAccessResult: ...

    def action(self, descriptor: MethodDescriptor, parameters: Data) -> tuple[ActionResult, Data]: ...


class ServerState(enum.Enum):
    IDLE = "idle"
    AWAITING_HLS = "awaiting-hls"
    ASSOCIATED = "associated"


class _Accepted:
    pass


class _PendingHls:
    pass


class _Rejected:
    pass


class _HlsPassed:
    pass


class _HlsFailed:
    pass


class _Served:
    pass


class _Released:
    pass


_S = ServerState
_TABLE: dict[ServerState, dict[type, ServerState]] = {
    _S.IDLE: {_Accepted: _S.ASSOCIATED, _PendingHls: _S.AWAITING_HLS, _Rejected: _S.IDLE, _Released: _S.IDLE},
    _S.AWAITING_HLS: {
        _HlsPassed: _S.ASSOCIATED,
        _HlsFailed: _S.IDLE,
        _Served: _S.AWAITING_HLS,
        _Released: _S.IDLE,
        _Accepted: _S.ASSOCIATED,
        _PendingHls: _S.AWAITING_HLS,
        _Rejected: _S.IDLE,
    },
    _S.ASSOCIATED: {_Served: _S.ASSOCIATED, _Released: _S.IDLE, _Rejected: _S.ASSOCIATED},
}
"""Server association states (IEC 62056-5-3 clause 9.4.1): {state: {event type: next state}}."""


@dataclass(slots=True)
class _BlockTransfer:
    """A long GET answer being sent block by block."""

    raw: bytes
    sent: int  # bytes already sent
    block_number: int  # number of the last block sent
    block_size: int
    invoke_id_and_priority: int


class ServerConnection:
    """One association of a client SAP with a logical device, from the server's side.

    ``receive_apdu(apdu) -> answer`` (None: nothing to answer). ``security`` is required when the
    policy ciphers or uses HLS-GMAC.
    """

    def __init__(
        self,
        policy: ClientPolicy,
        handler: RequestHandler,
        *,
        security: ServerSecurity | None,
        max_pdu_size: int = 1024,
        conformance: Conformance = SERVER_CONFORMANCE,
        random_bytes: Callable[[int], bytes],
    ) -> None:
        if (policy.ciphered or policy.mechanism is Mechanism.HLS_GMAC) and security is None:
            raise ValueError("a ciphered or HLS-GMAC policy needs the server's Suite 0 security")
        self.policy = policy
        self.handler = handler
        self.security = security
        self.server_max_pdu_size = max_pdu_size
        self.supported = conformance
        self._random = random_bytes
        self._machine = StateMachine(_TABLE, ServerState.IDLE)
        self.client_system_title: bytes | None = None
        self.conformance = Conformance(0)
        self.max_pdu_size = max_pdu_size
        self._stoc = b""
        self._ctos = b""
        self._hls_passed = False
        self._blocks: _BlockTransfer | None = None
        self._general = False  # the request being served came general-glo-ciphered

    @property
    def state(self) -> ServerState:
        return self._machine.state

    # ------------------------------------------------------------------------------ entry point

    def receive_apdu(self, apdu: bytes) -> bytes | None:
        """Answer one APDU (IEC 62056-47 framing is the caller's); never raises on bad input."""
        tag = apdu[0] if apdu else -1
        if tag == AARQ.TAG:
            return self._on_aarq(apdu)
        if tag == RLRQ.TAG:
            self._blocks = None
            self._machine.fire(_Released)
            return RLRE().encode()
        if plain_tag(tag) is not None or tag == GENERAL_GLO_CIPHERING:
            return self._on_ciphered(apdu)
        if tag in (0xC0, 0xC1, 0xC3):
            return self._on_plain(apdu)
        return _exception(ExceptionStateError.SERVICE_UNKNOWN, ExceptionServiceError.SERVICE_NOT_SUPPORTED)

    # ------------------------------------------------------------------------------ association

    def _on_aarq(self, apdu: bytes) -> bytes:
        try:
            aarq = AARQ.decode(apdu)
        except DecodeError:
            return self._reject(_DiagnosticT.NO_REASON_GIVEN)
        if self.state is ServerState.ASSOCIATED:
            return self._reject(_DiagnosticT.NO_REASON_GIVEN)  # one association at a time; keep this one
        diagnostic = self._check_acse(aarq)
        if diagnostic is not None:
            return self._reject(diagnostic)
        initiate = self._initiate_request(aarq)
        if not isinstance(initiate, InitiateRequest):
            return self._reject(initiate)
        refusal = self._check_initiate(initiate)
        if refusal is not None:
            return self._reject(_DiagnosticT.NO_REASON_GIVEN, ConfirmedServiceError(value=refusal).encode())
        return self._accept(aarq, initiate)

    def _check_acse(self, aarq: AARQ) -> AcseServiceUserDiagnostic | None:
        """The policy's context and mechanism (Green Book 9.4.2.2.2 and 9.4.2.2.3)."""
        policy = self.policy
        if aarq.application_context != policy.context:
            return _DiagnosticT.APPLICATION_CONTEXT_NAME_NOT_SUPPORTED
        mechanism = Mechanism.NONE if aarq.mechanism is None else aarq.mechanism
        if policy.mechanism is Mechanism.HLS_GMAC:
            if mechanism == Mechanism.NONE:
                return _DiagnosticT.AUTHENTICATION_MECHANISM_NAME_REQUIRED
            if mechanism != Mechanism.HLS_GMAC:
                return _DiagnosticT.AUTHENTICATION_MECHANISM_NAME_NOT_RECOGNISED
            if not aarq.calling_authentication_value or not 8 <= len(aarq.calling_authentication_value) <= 64:
                return _DiagnosticT.AUTHENTICATION_FAILURE
        elif mechanism != policy.mechanism:
            return _DiagnosticT.AUTHENTICATION_MECHANISM_NAME_NOT_RECOGNISED
        secured = policy.ciphered or policy.mechanism is Mechanism.HLS_GMAC
        if secured and (aarq.calling_ap_title is None or len(aarq.calling_ap_title) != 8):
            return _DiagnosticT.CALLING_AP_TITLE_NOT_RECOGNIZED
        return None

    def _initiate_request(self, aarq: AARQ) -> InitiateRequest | AcseServiceUserDiagnostic:
        """The (deciphered) InitiateRequest, or the diagnostic to reject with."""
        data = aarq.user_information
        if not data:
            return _DiagnosticT.NO_REASON_GIVEN
        if self.policy.ciphered:
            if data[0] != glo_tag(InitiateRequest.TAG):
                return _DiagnosticT.APPLICATION_CONTEXT_NAME_NOT_SUPPORTED  # ciphering missing
            assert self.security is not None
            try:
                data = self._decipher(data, aarq.calling_ap_title)
            except ReplayError:
                return _DiagnosticT.AUTHENTICATION_FAILURE
            except (SecurityError, DecodeError):
                return _DiagnosticT.NO_REASON_GIVEN
        try:
            return InitiateRequest.decode(data)
        except DecodeError:
            return _DiagnosticT.NO_REASON_GIVEN

    def _check_initiate(self, initiate: InitiateRequest) -> InitiateErrorReason | None:
        if initiate.dlms_version < 6:
            return InitiateErrorReason.DLMS_VERSION_TOO_LOW
        if initiate.client_max_receive_pdu_size and initiate.client_max_receive_pdu_size < _MIN_PDU:
            return InitiateErrorReason.PDU_SIZE_TOO_SHORT
        if not initiate.conformance & self.supported:
            return InitiateErrorReason.INCOMPATIBLE_CONFORMANCE
        return None

    def _accept(self, aarq: AARQ, initiate: InitiateRequest) -> bytes:
        policy = self.policy
        hls = policy.mechanism is Mechanism.HLS_GMAC
        self.client_system_title = aarq.calling_ap_title
        self.conformance = initiate.conformance & self.supported
        client_max = initiate.client_max_receive_pdu_size or 0xFFFF  # 0: no limit announced
        self.max_pdu_size = min(client_max, self.server_max_pdu_size)
        self._blocks = None
        self._general = False
        user_information = InitiateResponse(self.conformance, self.server_max_pdu_size).encode()
        if policy.ciphered:
            user_information = self._cipher(user_information)
        self._ctos = aarq.calling_authentication_value or b""
        self._stoc = self._random(16) if hls else b""
        self._hls_passed = False
        self._machine.fire(_PendingHls if hls else _Accepted)
        return AARE(
            result=AssociationResult.ACCEPTED,
            diagnostic=_DiagnosticT.AUTHENTICATION_REQUIRED if hls else _DiagnosticT.NULL,
            application_context=policy.context,
            responding_ap_title=self.security.system_title if self.security and (hls or policy.ciphered) else None,
            authentication=hls,
            mechanism=Mechanism.HLS_GMAC if hls else None,
            responding_authentication_value=self._stoc if hls else None,
            user_information=user_information,
        ).encode()

    def _reject(self, diagnostic: int, user_information: bytes | None = None) -> bytes:
        self._machine.fire(_Rejected)
        return AARE(
            result=AssociationResult.REJECTED_PERMANENT,
            diagnostic=diagnostic,
            application_context=self.policy.context,
            user_information=user_information,
        ).encode()

    def reply_to_hls(self, f_stoc: bytes) -> bytes:
        """HLS pass 3 check and pass 4 answer; AuthenticationTagError when f(StoC) does not verify.

        Only while the association waits for it (else SecurityError): a second run is refused.
        """
        if self.state is not ServerState.AWAITING_HLS or self._hls_passed:
            raise SecurityError("HLS authentication is not pending on this association")
        security = self.security
        assert security is not None
        assert self.client_system_title is not None  # checked by _check_acse
        suite = security.suite
        suite.verify_hls_gmac(f_stoc, system_title=self.client_system_title, challenge=self._stoc)
        self._hls_passed = True
        return suite.hls_gmac(
            system_title=security.system_title,
            invocation_counter=security.next_invocation_counter(),
            challenge=self._ctos,
        )

    # ------------------------------------------------------------------------------ data transfer

    def _on_plain(self, apdu: bytes) -> bytes:
        if self.state is ServerState.IDLE or self.policy.ciphered:
            return _exception(ExceptionStateError.SERVICE_NOT_ALLOWED, ExceptionServiceError.OPERATION_NOT_POSSIBLE)
        return self._serve(apdu)

    def _on_ciphered(self, apdu: bytes) -> bytes:
        if self.state is ServerState.IDLE or not self.policy.ciphered:
            return _exception(ExceptionStateError.SERVICE_NOT_ALLOWED, ExceptionServiceError.OPERATION_NOT_POSSIBLE)
        try:
            plain = self._decipher(apdu, self.client_system_title)
        except ReplayError as exc:
            return _exception(
                ExceptionStateError.SERVICE_NOT_ALLOWED, ExceptionServiceError.INVOCATION_COUNTER_ERROR, exc.expected
            )
        except (SecurityError, DecodeError):
            return _exception(ExceptionStateError.SERVICE_NOT_ALLOWED, ExceptionServiceError.DECIPHERING_ERROR)
        expected_tag = plain_tag(apdu[0])
        if not plain or (expected_tag is not None and plain[0] != expected_tag):
            return _exception(ExceptionStateError.SERVICE_NOT_ALLOWED, ExceptionServiceError.DECIPHERING_ERROR)
        self._general = apdu[0] == GENERAL_GLO_CIPHERING
        return self._cipher(self._serve(plain))

    def _serve(self, apdu: bytes) -> bytes:
        try:
            request = decode_apdu(apdu)
        except DecodeError:
            return _exception(ExceptionStateError.SERVICE_UNKNOWN, ExceptionServiceError.OTHER_REASON)
        if self.state is ServerState.AWAITING_HLS:
            return self._serve_pending_hls(request)
        self._machine.fire(_Served)
        if isinstance(request, GetRequestNormal):
            result = self.handler.get(request.descriptor, request.access)
            return self._get_answer(1, (result,), request.invoke_id_and_priority)
        if isinstance(request, GetRequestNext):
            return self._next_block(request)
        if isinstance(request, GetRequestWithList):
            results = tuple(self.handler.get(descriptor, access) for descriptor, access in request.items)
            return self._get_answer(3, results, request.invoke_id_and_priority)
        if isinstance(request, SetRequestNormal):
            outcome = self.handler.set(request.descriptor, request.value)
            return SetResponseNormal(outcome, request.invoke_id_and_priority).encode()
        if isinstance(request, ActionRequestNormal):
            return self._action(request)
        return _exception(ExceptionStateError.SERVICE_UNKNOWN, ExceptionServiceError.SERVICE_NOT_SUPPORTED)

    def _serve_pending_hls(self, request: object) -> bytes:
        """Before HLS completes, only reply_to_HLS_authentication of the current association runs."""
        hls_call = MethodDescriptor(15, CURRENT_ASSOCIATION, 1)
        if isinstance(request, ActionRequestNormal) and request.descriptor == hls_call:
            answer = self._action(request)
            self._machine.fire(_HlsPassed if self._hls_passed else _HlsFailed)
            return answer
        self._machine.fire(_Served)
        iip = getattr(request, "invoke_id_and_priority", 0xC1)
        if isinstance(request, GetRequestNormal | GetRequestNext | GetRequestWithList):
            return GetResponseNormal(DataAccessResult.READ_WRITE_DENIED, iip).encode()
        if isinstance(request, SetRequestNormal):
            return SetResponseNormal(DataAccessResult.READ_WRITE_DENIED, iip).encode()
        if isinstance(request, ActionRequestNormal):
            return ActionResponseNormal(ActionResult.READ_WRITE_DENIED, None, iip).encode()
        return _exception(ExceptionStateError.SERVICE_NOT_ALLOWED, ExceptionServiceError.OPERATION_NOT_POSSIBLE)

    def _action(self, request: ActionRequestNormal) -> bytes:
        result, data = self.handler.action(request.descriptor, request.parameters)
        has_data = result == ActionResult.SUCCESS and data is not None
        return ActionResponseNormal(
            result, data if has_data else None, request.invoke_id_and_priority, has_data
        ).encode()

    # ------------------------------------------------------------------------------ GET blocks

    def _limit(self) -> int:
        """The largest plain APDU that fits the negotiated PDU size once ciphered."""
        return self.max_pdu_size - (_CIPHER_OVERHEAD if self.policy.ciphered else 0)

    def _get_answer(self, kind: int, results: tuple[Data | DataAccessResult, ...], iip: int) -> bytes:
        """GET-Response-Normal (kind 1) or -With-List (kind 3), in blocks when too long (9.3.6)."""
        try:
            body = b"".join(_get_data_result(result) for result in results)
        except DlmsError:  # an object produced a value with no A-XDR encoding
            return GetResponseNormal(DataAccessResult.OTHER_REASON, iip).encode()
        head = bytes((0xC4, kind, iip)) + (encode_length(len(results)) if kind == 3 else b"")
        if len(head) + len(body) <= self._limit():
            return head + body
        if not self.conformance & Conformance.BLOCK_TRANSFER_WITH_GET_OR_READ:
            return GetResponseNormal(DataAccessResult.OTHER_REASON, iip).encode()
        raw = head[3:] + body if kind == 3 else body[1:]  # with-list: the list; normal: the Data itself
        size = max(16, self._limit() - _BLOCK_OVERHEAD)
        self._blocks = _BlockTransfer(raw, 0, 0, size, iip)
        return self._send_block()

    def _next_block(self, request: GetRequestNext) -> bytes:
        blocks = self._blocks
        iip = request.invoke_id_and_priority
        if blocks is None:
            return GetResponseWithDataBlock(
                True, request.block_number, DataAccessResult.NO_LONG_GET_IN_PROGRESS, iip
            ).encode()
        if request.block_number != blocks.block_number:
            self._blocks = None
            return GetResponseWithDataBlock(True, request.block_number, DataAccessResult.LONG_GET_ABORTED, iip).encode()
        return self._send_block()

    def _send_block(self) -> bytes:
        blocks = self._blocks
        assert blocks is not None
        chunk = blocks.raw[blocks.sent : blocks.sent + blocks.block_size]
        blocks.sent += len(chunk)
        blocks.block_number += 1
        last = blocks.sent >= len(blocks.raw)
        if last:
            self._blocks = None
        return GetResponseWithDataBlock(last, blocks.block_number, chunk, blocks.invoke_id_and_priority).encode()

    # ------------------------------------------------------------------------------ ciphering

    def _decipher(self, apdu: bytes, sender: bytes | None) -> bytes:
        security = self.security
        assert security is not None
        guard = security.guard(self.policy.client_sap)
        return security.suite.plaintext(apdu, system_title=sender, replay_guard=guard)

    def _cipher(self, plain: bytes) -> bytes:
        """Glo-cipher an answer (general-glo when the request was); exception-responses stay plain."""
        if not self.policy.ciphered or plain[0] == _EXCEPTION_TAG:
            return plain
        security = self.security
        assert security is not None
        title, ic, suite = security.system_title, security.next_invocation_counter(), security.suite
        sc = SC_AUTHENTICATED_ENCRYPTED
        if self._general:
            return suite.cipher_general_glo(plain, security_control=sc, system_title=title, invocation_counter=ic)
        return suite.cipher(
            plain, tag=glo_tag(plain[0]), security_control=sc, system_title=title, invocation_counter=ic
        )


def _get_data_result(result: Data | DataAccessResult) -> bytes:
    """Get-Data-Result: ``00`` and the data (spliced when already encoded) or ``01`` and the result."""
    if isinstance(result, EncodedData):
        return b"\x00" + result
    return encode_get_data_result(result)


def _exception(state: int, service: int, invocation_counter: int | None = None) -> bytes:
    return ExceptionResponse(state, service, invocation_counter).encode()
