"""Security Setup (class 64) interface class (Blue Book, clause 4.4.7), version 0.

Attributes: 2 security_policy (enum: 0 none, 1 authenticated, 2 encrypted, 3 authenticated and
encrypted), 3 security_suite (enum: 0 = AES-GCM-128, Suite 0), 4 client_system_title (the system
title of the client of the current association), 5 server_system_title.

Methods: 1 security_activate is not implemented (other-reason); 2 global_key_transfer takes an
array of {key_id, key_wrapped} (``keywrap``): every key is unwrapped with the meter's master key
(KEK), all or nothing, and handed to the meter's :class:`KeyHolder`, which applies them from the
next association on. Only an association that is HLS-authenticated and ciphered may invoke it
(read-write-denied otherwise, whatever the rights say). A malformed parameter is answered
type-unmatched, a wrap that does not verify (wrong KEK, altered bytes) other-reason: the keys stay
as they were in both cases.
"""

from __future__ import annotations

from typing import Protocol

from openami.protocols.dlms.acse import ApplicationContext, Mechanism
from openami.protocols.dlms.axdr import Enum
from openami.protocols.dlms.cosem.base import AssociationView, CosemAccessError, CosemObject, Result, Value
from openami.protocols.dlms.errors import DecodeError, SecurityError
from openami.protocols.dlms.keywrap import GLOBAL_KEY_TRANSFER, KeyId, decode_key_transfer, unwrap_keys
from openami.protocols.dlms.obis import Obis

__all__ = ["KeyHolder", "SecuritySetup"]

_ASSOCIATED = 2
_NAMES = {KeyId.GLOBAL_UNICAST_ENCRYPTION: "guek", KeyId.AUTHENTICATION: "gak", KeyId.MASTER: "kek"}


class KeyHolder(Protocol):
    """Where a meter keeps its keys (``server_policy.ServerSecurity``)."""

    @property
    def kek(self) -> bytes | None: ...

    def stage_keys(self, *, guek: bytes | None = None, gak: bytes | None = None, kek: bytes | None = None) -> None:
        """Hold new keys for the next association."""
        ...


class SecuritySetup(CosemObject):
    """Security setup (class_id 64, version 0); keys can be written (wrapped), never read."""

    class_id = 64
    attribute_count = 5
    method_count = 2

    def __init__(
        self,
        logical_name: Obis,
        *,
        server_system_title: bytes,
        policy: int = 3,
        suite: int = 0,
        keys: KeyHolder | None = None,
    ) -> None:
        super().__init__(logical_name)
        self.server_system_title = server_system_title
        self.policy = policy
        self.suite = suite
        self.keys = keys
        """None: the meter accepts no key transfer (method 2 answers other-reason)."""

    def _get(self, attribute: int, view: AssociationView, selector: int | None, parameters: Value) -> Value:
        if attribute == 2:
            return Enum(self.policy)
        if attribute == 3:
            return Enum(self.suite)
        if attribute == 4:
            return view.client_system_title or b""
        return self.server_system_title

    def _action(self, method: int, parameters: Value, view: AssociationView) -> Value:
        if method != GLOBAL_KEY_TRANSFER:
            return super()._action(method, parameters, view)
        info = view.association_info()
        secured = (
            info.mechanism_id == Mechanism.HLS_GMAC
            and info.context_id == ApplicationContext.LN_CIPHERING
            and info.status == _ASSOCIATED
        )
        if not secured:
            raise CosemAccessError(Result.READ_WRITE_DENIED, "key transfer needs an HLS, ciphered association")
        holder = self.keys
        kek = None if holder is None else holder.kek
        if holder is None or kek is None:
            raise CosemAccessError(Result.OTHER_REASON, "this meter has no master key")
        try:
            items = decode_key_transfer(parameters)
        except DecodeError:
            raise CosemAccessError(Result.TYPE_UNMATCHED, "malformed key transfer") from None
        if any(item.key_id not in _NAMES for item in items):
            raise CosemAccessError(Result.OTHER_REASON, "the broadcast key is not supported")
        try:
            keys = unwrap_keys(kek, items)
        except SecurityError:
            raise CosemAccessError(Result.OTHER_REASON, "a wrapped key did not unwrap") from None
        if any(len(key) != 16 for key in keys.values()):
            raise CosemAccessError(Result.OTHER_REASON, "Suite 0 keys are 16 bytes")
        holder.stage_keys(**{_NAMES[key_id]: key for key_id, key in keys.items()})
        return None
