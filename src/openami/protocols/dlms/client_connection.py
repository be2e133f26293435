"""The client (head-end) side of a DLMS/COSEM association, sans-IO.

IEC 62056-5-3 clause 9.4 (association establishment, data transfer, release) with the DLMS UA
Green Book security (clause 9.2): the AARQ proposes the context, mechanism and an xDLMS
InitiateRequest (glo-ciphered when the association is), the AARE answers; with HLS-GMAC
(mechanism 5) the connection then runs passes 3 and 4 by itself: a ciphered ACTION
reply_to_HLS_authentication (class 15, 0.0.40.0.0.255, method 1) carrying f(StoC), and the check of
the server's f(CtoS). Every request on a ciphered association is glo-ciphered with SC 0x30 and the
client's invocation counter; every response is deciphered, its tag verified and its counter
checked against the server's replay guard. A GET answered with blocks is reassembled here:
the connection queues get-request-next itself (``data_to_send``) until the last block.

Use: ``send(event) -> bytes`` to write; ``receive_data(bytes)`` what was read; ``next_event()``
until it returns ``NEED_DATA``, then write ``data_to_send()`` (if any) and read again. Failures
are raised as ``DlmsError`` subclasses (tag, replay, decode, HLS, protocol state).
"""

from __future__ import annotations

import enum
import os
from collections import deque
from collections.abc import Callable
from typing import TypeVar

from openami.protocols.dlms.acse import (
    AARE,
    AARQ,
    RLRE,
    RLRQ,
    AcseServiceUserDiagnostic,
    ApplicationContext,
    AssociationResult,
    Mechanism,
)
from openami.protocols.dlms.apdu import (
    ActionRequestNormal,
    ActionResponseNormal,
    ActionResult,
    Apdu,
    DataAccessResult,
    ExceptionResponse,
    GetRequestNext,
    GetRequestNormal,
    GetRequestWithList,
    GetResponseNormal,
    GetResponseWithDataBlock,
    GetResponseWithList,
    MethodDescriptor,
    SetRequestNormal,
    SetResponseNormal,
    decode_apdu,
    decode_data_result,
)
from openami.protocols.dlms.apdu_types import Cursor
from openami.protocols.dlms.axdr import Data
from openami.protocols.dlms.client_events import (
    DEFAULT_CONFORMANCE,
    Associate,
    Associated,
    AssociationRejected,
    ClientEvent,
    ClientSettings,
    Release,
    Released,
    Request,
    Response,
    ResponseApdu,
)
from openami.protocols.dlms.connection import NEED_DATA, EncodedData, NeedData, StateMachine
from openami.protocols.dlms.errors import (
    AuthenticationTagError,
    CipheringRequiredError,
    DecodeError,
    ProtocolStateError,
    SecurityError,
)
from openami.protocols.dlms.obis import CURRENT_ASSOCIATION
from openami.protocols.dlms.security import (
    GENERAL_GLO_CIPHERING,
    GLO_TAGS,
    ReplayGuard,
    Suite0,
    glo_tag,
    plain_tag,
)
from openami.protocols.dlms.session_errors import HlsAuthenticationError
from openami.protocols.dlms.wrapper import WrapperFramer, encode_wrapper
from openami.protocols.dlms.xdlms import (
    ConfirmedServiceError,
    Conformance,
    InitiateRequest,
    InitiateResponse,
    decode_xdlms_initiate,
)

__all__ = [
    "DEFAULT_CONFORMANCE",
    "Associate",
    "Associated",
    "AssociationRejected",
    "ClientConnection",
    "ClientEvent",
    "ClientSettings",
    "ClientState",
    "Release",
    "Released",
    "Request",
    "Response",
    "ResponseApdu",
]

_T = TypeVar("_T")
SC_AUTHENTICATED_ENCRYPTED = 0x30
"""Security control byte of Suite 0 with authentication and encryption (Green Book 9.2.7.2.3)."""
_MAX_IC = 0xFFFFFFFF
_EXCEPTION_TAG = 0xD8
_INVOKE_ID_MASK = 0x0F


class _ServiceRequest:
    """Table key for any xDLMS request sent."""


class _HlsChallenge:
    """Table key: an AARE accepted pending HLS passes 3 and 4."""


class _BlockReceived:
    """Table key: a GET block that is not the last."""


class _Failed:
    """Table key: the association could not be completed (HLS failed)."""


class ClientState(enum.Enum):
    IDLE = "idle"
    AWAITING_AARE = "awaiting-aare"
    AWAITING_HLS = "awaiting-hls-reply"
    ASSOCIATED = "associated"
    AWAITING_RESPONSE = "awaiting-response"
    AWAITING_RLRE = "awaiting-rlre"
    RELEASED = "released"
    REJECTED = "rejected"


_S = ClientState
_TABLE: dict[ClientState, dict[type, ClientState]] = {
    _S.IDLE: {Associate: _S.AWAITING_AARE},
    _S.AWAITING_AARE: {Associated: _S.ASSOCIATED, _HlsChallenge: _S.AWAITING_HLS, AssociationRejected: _S.REJECTED},
    _S.AWAITING_HLS: {Associated: _S.ASSOCIATED, _Failed: _S.REJECTED},
    _S.ASSOCIATED: {_ServiceRequest: _S.AWAITING_RESPONSE, Release: _S.AWAITING_RLRE},
    _S.AWAITING_RESPONSE: {Response: _S.ASSOCIATED, _BlockReceived: _S.AWAITING_RESPONSE},
    _S.AWAITING_RLRE: {Released: _S.RELEASED},
    _S.RELEASED: {Associate: _S.AWAITING_AARE},
    _S.REJECTED: {Associate: _S.AWAITING_AARE},
}
"""Client association states (IEC 62056-5-3 clause 9.4.1): {state: {event type: next state}}."""

_RESPONSE_TYPES: dict[type, tuple[type, ...]] = {
    GetRequestNormal: (GetResponseNormal, GetResponseWithDataBlock),
    GetRequestWithList: (GetResponseWithList, GetResponseWithDataBlock),
    SetRequestNormal: (SetResponseNormal,),
    ActionRequestNormal: (ActionResponseNormal,),
}


_AnswerTypes = (
    GetResponseNormal,
    GetResponseWithList,
    SetResponseNormal,
    ActionResponseNormal,
    GetResponseWithDataBlock,
)


class ClientConnection:
    """One association from the client's side, over the IEC 62056-47 wrapper (sans-IO).

    ``challenge`` is the client's HLS challenge CtoS (16 random bytes when not given; inject it in
    tests only). ``random_bytes`` supplies randomness.
    """

    def __init__(
        self,
        settings: ClientSettings,
        *,
        challenge: bytes | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.settings = settings
        self._machine = StateMachine(_TABLE, ClientState.IDLE)
        self._framer = WrapperFramer()
        self._events: deque[ClientEvent] = deque()
        self._outbox = bytearray()
        self._ic = settings.invocation_counter
        self._server_guard = ReplayGuard(settings.server_invocation_counter)
        self._challenge = challenge if challenge is not None else random_bytes(16)
        self._server_title: bytes | None = None
        self._suite: Suite0 | None = None  # built on first use: keys checked, AES key schedule once
        self._pending: Request | None = None
        self._raw = False
        self._blocks = bytearray()
        self._block_number = 0
        self.conformance = Conformance(0)
        self.max_pdu_size = settings.max_pdu_size

    # ------------------------------------------------------------------------------ properties

    @property
    def state(self) -> ClientState:
        return self._machine.state

    @property
    def client_invocation_counter(self) -> int:
        """The next invocation counter this client will use (persist it after the session)."""
        return self._ic

    @property
    def server_invocation_counter(self) -> int:
        """The last invocation counter accepted from the server (-1: none)."""
        return self._server_guard.last_accepted

    @property
    def server_system_title(self) -> bytes | None:
        return self._server_title

    # ------------------------------------------------------------------------------ sans-IO API

    def send(self, event: Associate | Release | Request, *, raw: bool = False) -> bytes:
        """The bytes to write for ``event``; ProtocolStateError when it is not allowed now.

        ``raw`` (GET-normal only): a successful answer comes as ``GetResponseNormal`` whose result
        is the value still encoded (``EncodedData``), for a specialised decoder.
        """
        if isinstance(event, Associate):
            self._machine.fire(Associate)
            self._reset_association()
            return self._frame(self._aarq().encode())
        if isinstance(event, Release):
            self._machine.fire(Release)
            return self._frame(RLRQ().encode())
        if type(event) not in _RESPONSE_TYPES:
            raise ProtocolStateError(f"{type(event).__name__} is not a request a client sends")
        self._machine.fire(_ServiceRequest)
        self._pending = event
        self._raw = raw and isinstance(event, GetRequestNormal)
        self._blocks.clear()
        self._block_number = 0
        return self._frame(self._protect(event.encode()))

    def receive_data(self, data: bytes) -> None:
        """Give the connection bytes read from the transport."""
        self._framer.feed(data)

    def next_event(self) -> ClientEvent | NeedData:
        """The next event, or NEED_DATA (then write ``data_to_send()`` and read more)."""
        while not self._events:
            frame = self._framer.next_frame()
            if frame is None:
                return NEED_DATA
            if (frame.source_wport, frame.dest_wport) != (self.settings.server_address, self.settings.client_sap):
                raise ProtocolStateError(f"frame from wPort {frame.source_wport} to {frame.dest_wport} is not ours")
            self._handle(frame.apdu)
        return self._events.popleft()

    def data_to_send(self) -> bytes:
        """Bytes the connection produced by itself (HLS pass 3, get-request-next); empties the outbox."""
        out = bytes(self._outbox)
        self._outbox.clear()
        return out

    # ------------------------------------------------------------------------------ association

    def _reset_association(self) -> None:
        self._server_title = None
        self.conformance = Conformance(0)
        self.max_pdu_size = self.settings.max_pdu_size

    def _aarq(self) -> AARQ:
        s = self.settings
        user_information = InitiateRequest(s.conformance, s.max_pdu_size).encode()
        if s.ciphered:
            user_information = self._cipher(user_information)
        hls = s.mechanism is Mechanism.HLS_GMAC
        return AARQ(
            application_context=ApplicationContext.LN_CIPHERING if s.ciphered else ApplicationContext.LN,
            calling_ap_title=s.system_title if (s.ciphered or hls) else None,
            authentication=hls,
            mechanism=Mechanism.HLS_GMAC if hls else None,
            calling_authentication_value=self._challenge if hls else None,
            user_information=user_information,
        )

    def _on_aare(self, aare: AARE) -> None:
        if aare.result != AssociationResult.ACCEPTED:
            self._emit(AssociationRejected(aare.result, aare.diagnostic, aare.diagnostic_source))
            return
        self._server_title = aare.responding_ap_title
        initiate = self._initiate_response(aare)
        if isinstance(initiate, ConfirmedServiceError):
            self._emit(AssociationRejected(AssociationResult.REJECTED_PERMANENT, aare.diagnostic, 1))
            return
        self.conformance = initiate.conformance
        self.max_pdu_size = min(self.settings.max_pdu_size, initiate.server_max_receive_pdu_size)
        if self.settings.mechanism is not Mechanism.HLS_GMAC:
            self._emit(Associated(self.conformance, self.max_pdu_size, self._server_title))
            return
        self._start_hls(aare)

    def _initiate_response(self, aare: AARE) -> InitiateResponse | ConfirmedServiceError:
        data = aare.user_information
        if data is None:
            raise DecodeError("accepted AARE without user-information", offset=0, expected="an InitiateResponse")
        if self.settings.ciphered:
            if data[:1] != bytes((GLO_TAGS[0x08],)):
                raise CipheringRequiredError("the AARE's InitiateResponse is not glo-ciphered")
            data = self._decipher(data)
        initiate = decode_xdlms_initiate(data)
        if isinstance(initiate, InitiateRequest):
            raise DecodeError("AARE carries an InitiateRequest", offset=0, expected="an InitiateResponse")
        return initiate

    def _start_hls(self, aare: AARE) -> None:
        """HLS pass 3: answer StoC with f(StoC) in a ciphered reply_to_HLS_authentication."""
        stoc = aare.responding_authentication_value
        if aare.diagnostic != AcseServiceUserDiagnostic.AUTHENTICATION_REQUIRED or not stoc:
            raise HlsAuthenticationError("the AARE did not ask for HLS authentication (no challenge)")
        if self._server_title is None or len(self._server_title) != 8:
            raise HlsAuthenticationError("the AARE carries no 8-byte server system title")
        title, suite = self._secrets()
        f_stoc = suite.hls_gmac(system_title=title, invocation_counter=self._next_ic(), challenge=stoc)
        action = ActionRequestNormal(MethodDescriptor(15, CURRENT_ASSOCIATION, 1), f_stoc)
        self._machine.fire(_HlsChallenge)
        self._pending = action
        self._outbox += self._frame(self._protect(action.encode()))

    def _on_hls_reply(self, apdu: object) -> None:
        """HLS pass 4: the server's f(CtoS) must verify with its system title."""
        _, suite = self._secrets()
        assert self._server_title is not None  # checked before pass 3
        if not isinstance(apdu, ActionResponseNormal) or apdu.result != ActionResult.SUCCESS:
            self._machine.fire(_Failed)
            raise HlsAuthenticationError("the server refused our HLS answer f(StoC)")
        if not isinstance(apdu.return_data, bytes):
            self._machine.fire(_Failed)
            raise HlsAuthenticationError("the server's HLS reply carries no f(CtoS)")
        try:
            suite.verify_hls_gmac(apdu.return_data, system_title=self._server_title, challenge=self._challenge)
        except AuthenticationTagError:
            self._machine.fire(_Failed)
            raise HlsAuthenticationError("the server's f(CtoS) does not verify (wrong keys or not the meter)") from None
        self._pending = None
        self._emit(Associated(self.conformance, self.max_pdu_size, self._server_title))

    # ------------------------------------------------------------------------------ data transfer

    def _handle(self, raw: bytes) -> None:
        state = self._machine.state
        if state is ClientState.AWAITING_AARE:
            self._on_aare(_expect(decode_apdu(raw), AARE))
        elif state is ClientState.AWAITING_RLRE:
            self._emit(Released(_expect(decode_apdu(raw), RLRE).reason))
        elif state is ClientState.AWAITING_HLS:
            self._on_hls_reply(self._open(raw))
        elif state is ClientState.AWAITING_RESPONSE:
            plain = self._plaintext(raw)
            if self._raw and plain[:2] == b"\xc4\x01" and len(plain) > 4 and plain[3] == 0:
                self._on_response(GetResponseNormal(EncodedData(plain[4:]), plain[2]))
            else:
                self._on_response(decode_apdu(plain))
        else:
            raise ProtocolStateError(f"unexpected APDU 0x{raw[:1].hex()} in state {state.name}")

    def _on_response(self, apdu: object) -> None:
        pending = self._pending
        assert pending is not None
        if isinstance(apdu, ExceptionResponse):
            self._emit(Response(apdu))
            return
        if not isinstance(apdu, _RESPONSE_TYPES[type(pending)]):
            raise ProtocolStateError(f"{type(apdu).__name__} does not answer {type(pending).__name__}")
        assert isinstance(apdu, _AnswerTypes)
        if (apdu.invoke_id_and_priority ^ pending.invoke_id_and_priority) & _INVOKE_ID_MASK:
            raise ProtocolStateError("the response's invoke-id is not the request's")
        if isinstance(apdu, GetResponseWithDataBlock):
            self._on_block(apdu, pending)
            return
        self._emit(Response(apdu))

    def _on_block(self, block: GetResponseWithDataBlock, pending: Request) -> None:
        """Reassemble get-response-with-datablock (IEC 62056-5-3 clause 9.3.6, GET with blocks)."""
        iip = pending.invoke_id_and_priority
        if isinstance(block.result, DataAccessResult):
            self._emit(Response(GetResponseNormal(block.result, iip)))
            return
        if block.block_number != self._block_number + 1:
            raise ProtocolStateError(f"block {block.block_number} where {self._block_number + 1} was expected")
        self._block_number = block.block_number
        self._blocks += block.result
        if not block.last_block:
            self._machine.fire(_BlockReceived)
            self._outbox += self._frame(self._protect(GetRequestNext(block.block_number, iip).encode()))
            return
        raw = bytes(self._blocks)
        self._blocks.clear()
        if isinstance(pending, GetRequestWithList):
            self._emit(Response(GetResponseWithList(_decode_result_list(raw), iip)))
        elif self._raw:
            self._emit(Response(GetResponseNormal(EncodedData(raw), iip)))
        else:
            self._emit(Response(GetResponseNormal(decode_data_result(raw), iip)))

    # ------------------------------------------------------------------------------ plumbing

    def _emit(self, event: ClientEvent) -> None:
        self._machine.fire(type(event))
        self._events.append(event)

    def _frame(self, apdu: bytes) -> bytes:
        return encode_wrapper(self.settings.client_sap, self.settings.server_address, apdu)

    def _secrets(self) -> tuple[bytes, Suite0]:
        """(own system title, Suite 0 with GUEK and GAK); the settings guarantee them on secured associations."""
        s = self.settings
        if s.system_title is None or s.guek is None or s.gak is None:
            raise SecurityError("this association has no keys")
        if self._suite is None:
            self._suite = Suite0(s.guek, s.gak)
        return s.system_title, self._suite

    def _next_ic(self) -> int:
        ic = self._ic
        if ic > _MAX_IC:
            raise SecurityError("the client's invocation counter is exhausted: new keys are needed")
        self._ic = ic + 1
        return ic

    def _cipher(self, plain: bytes) -> bytes:
        title, suite = self._secrets()
        return suite.cipher(
            plain,
            tag=glo_tag(plain[0]),
            security_control=SC_AUTHENTICATED_ENCRYPTED,
            system_title=title,
            invocation_counter=self._next_ic(),
        )

    def _protect(self, plain: bytes) -> bytes:
        return self._cipher(plain) if self.settings.ciphered else plain

    def _decipher(self, data: bytes) -> bytes:
        _, suite = self._secrets()
        return suite.plaintext(data, system_title=self._server_title, replay_guard=self._server_guard)

    def _open(self, raw: bytes) -> Apdu:
        """Decode a response (see ``_plaintext``)."""
        return decode_apdu(self._plaintext(raw))

    def _plaintext(self, raw: bytes) -> bytes:
        """Decipher a response (tag, replay) when ciphered; refuse it plain if it must not be."""
        if raw and (plain_tag(raw[0]) is not None or raw[0] == GENERAL_GLO_CIPHERING):
            if not self.settings.ciphered:
                raise SecurityError("a ciphered APDU on an association without ciphering")
            return self._decipher(raw)
        if self.settings.ciphered and raw[:1] != bytes((_EXCEPTION_TAG,)):
            raise CipheringRequiredError("an unciphered response on a ciphered association")
        return raw


def _expect(apdu: object, kind: type[_T]) -> _T:
    if not isinstance(apdu, kind):
        raise ProtocolStateError(f"{type(apdu).__name__} where {kind.__name__} was expected")
    return apdu


def _decode_result_list(raw: bytes) -> tuple[Data | DataAccessResult, ...]:
    cursor = Cursor(raw)
    results = tuple(cursor.get_data_result() for _ in range(cursor.count("result list")))
    cursor.end("get-response-with-list blocks")
    return results
