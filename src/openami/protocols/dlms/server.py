"""A DLMS/COSEM server session (sans-IO): one TCP connection's association with a logical device.

The session reads IEC 62056-47 wrapper frames, picks the client SAP's policy from the first frame
(an unknown client SAP or server address closes the connection without a reply, as meters do),
runs the association machine (``server_connection``) and maps GET/SET/ACTION onto the logical
device's objects with this client's access rights. It is also the *association view* the COSEM
objects see (object list, partners, HLS). Bytes in, bytes out: ``receive_data(data) -> bytes``,
and ``closed`` when the transport should hang up. A frame that breaks the wrapper (bad version,
length beyond the limit) closes this connection only. An AARQ arriving outside an association first
makes keys transferred in an earlier association current (Security Setup ``global_key_transfer``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from openami.protocols.dlms.apdu import (
    ActionResult,
    AttributeDescriptor,
    DataAccessResult,
    MethodDescriptor,
    SelectiveAccess,
)
from openami.protocols.dlms.axdr import Data
from openami.protocols.dlms.cosem import (
    AccessRights,
    AssociationInfo,
    CosemAccessError,
    CosemObject,
    LogicalDevice,
    Result,
)
from openami.protocols.dlms.cosem.clock import utc_now
from openami.protocols.dlms.errors import DecodeError, DlmsError
from openami.protocols.dlms.server_connection import SERVER_CONFORMANCE, ServerConnection, ServerState
from openami.protocols.dlms.server_policy import (
    ClientPolicy,
    ServerSecurity,
    full_rights,
    management_client,
    public_client,
    read_only,
)
from openami.protocols.dlms.wrapper import WrapperFramer, encode_wrapper
from openami.protocols.dlms.xdlms import Conformance

__all__ = [
    "ClientPolicy",
    "ServerConfig",
    "ServerSecurity",
    "ServerSession",
    "full_rights",
    "management_client",
    "public_client",
    "read_only",
]

_AARQ_TAG = b"\x60"
_STATUS = {ServerState.IDLE: 0, ServerState.AWAITING_HLS: 1, ServerState.ASSOCIATED: 2}


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """A server's logical device, its client policies by SAP and its Suite 0 security.

    ``max_pdu_size`` is the server's max receive PDU size (and the ceiling of what it sends);
    ``now`` and ``random_bytes`` are injectable for tests.
    """

    device: LogicalDevice
    policies: Mapping[int, ClientPolicy]
    security: ServerSecurity | None = None
    max_pdu_size: int = 1024
    conformance: Conformance = SERVER_CONFORMANCE
    now: Callable[[], datetime] = field(default=utc_now, compare=False)
    random_bytes: Callable[[int], bytes] = field(default=os.urandom, compare=False)


class ServerSession:
    """One TCP connection of a server: framing, the association and request dispatch."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._framer = WrapperFramer(max_apdu_length=max(config.max_pdu_size, 256))
        self._connection: ServerConnection | None = None
        self._policy: ClientPolicy | None = None
        self._rights: dict[tuple[int, bytes], AccessRights] = {}  # the policy's answers, per object
        self.closed = False

    # ------------------------------------------------------------------------------ transport side

    def receive_data(self, data: bytes) -> bytes:
        """Handle bytes read from the client; returns the bytes to write back (maybe none)."""
        if self.closed:
            return b""
        self._framer.feed(data)
        out = bytearray()
        while not self.closed:
            try:
                frame = self._framer.next_frame()
            except DecodeError:
                self.closed = True  # the stream cannot be resynchronised
                break
            if frame is None:
                break
            connection = self._connection_for(frame.source_wport, frame.dest_wport)
            if connection is None:
                self.closed = True
                break
            if frame.apdu[:1] == _AARQ_TAG and connection.state is not ServerState.ASSOCIATED:
                self._start_association()
            answer = connection.receive_apdu(frame.apdu)
            if answer is not None:
                out += encode_wrapper(frame.dest_wport, frame.source_wport, answer)
        return bytes(out)

    def _connection_for(self, client_sap: int, server_address: int) -> ServerConnection | None:
        """The association of this connection; None (close) for an unknown or a different peer."""
        if self._connection is not None:
            assert self._policy is not None
            same = client_sap == self._policy.client_sap and server_address == self.config.device.address
            return self._connection if same else None
        policy = self.config.policies.get(client_sap)
        if policy is None or server_address != self.config.device.address:
            return None
        self._policy = policy
        self._connection = ServerConnection(
            policy,
            self,
            security=self.config.security,
            max_pdu_size=self.config.max_pdu_size,
            conformance=self.config.conformance,
            random_bytes=self.config.random_bytes,
        )
        return self._connection

    def _start_association(self) -> None:
        """A new association starts: keys transferred during an earlier one take effect now."""
        if self.config.security is not None:
            self.config.security.activate_staged_keys()

    @property
    def state(self) -> ServerState:
        return ServerState.IDLE if self._connection is None else self._connection.state

    # ------------------------------------------------------------------------------ RequestHandler

    def get(self, descriptor: AttributeDescriptor, access: SelectiveAccess | None) -> Data | DataAccessResult:
        selection = None if access is None else (access.selector, access.parameters)
        result, value = self.config.device.get(
            self, descriptor.class_id, descriptor.instance_id.to_bytes(), descriptor.attribute_id, selection
        )
        return value if result is Result.SUCCESS else DataAccessResult(result)

    def set(self, descriptor: AttributeDescriptor, value: Data) -> DataAccessResult:
        result = self.config.device.set(
            self, descriptor.class_id, descriptor.instance_id.to_bytes(), descriptor.attribute_id, value
        )
        return DataAccessResult(result)

    def action(self, descriptor: MethodDescriptor, parameters: Data) -> tuple[ActionResult, Data]:
        result, value = self.config.device.action(
            self, descriptor.class_id, descriptor.instance_id.to_bytes(), descriptor.method_id, parameters
        )
        return ActionResult(result), value

    # ------------------------------------------------------------------------------ AssociationView

    @property
    def client_sap(self) -> int:
        return self._policy.client_sap if self._policy is not None else 0

    @property
    def client_system_title(self) -> bytes | None:
        return self._connection.client_system_title if self._connection is not None else None

    @property
    def now(self) -> datetime:
        return self.config.now()

    def rights_for(self, obj: CosemObject) -> AccessRights:
        if self._policy is None:
            return AccessRights()
        rights = self._rights.get(obj.key)
        if rights is None:
            rights = self._rights[obj.key] = self._policy.rights(obj)
        return rights

    def visible_objects(self) -> Sequence[tuple[CosemObject, AccessRights]]:
        visible = []
        for obj in self.config.device:
            rights = self.rights_for(obj)
            if rights.attributes or rights.methods:
                visible.append((obj, rights))
        return visible

    def association_info(self) -> AssociationInfo:
        connection = self._connection
        assert connection is not None
        assert self._policy is not None
        return AssociationInfo(
            server_sap=self.config.device.address,
            context_id=int(self._policy.context),
            mechanism_id=int(self._policy.mechanism),
            conformance=int(connection.conformance),
            max_receive_pdu_size=connection.max_pdu_size,
            max_send_pdu_size=self.config.max_pdu_size,
            status=_STATUS[connection.state],
        )

    def reply_to_hls(self, f_stoc: bytes) -> bytes:
        connection = self._connection
        assert connection is not None
        try:
            return connection.reply_to_hls(f_stoc)
        except DlmsError:
            raise CosemAccessError(Result.READ_WRITE_DENIED, "HLS authentication failed") from None
