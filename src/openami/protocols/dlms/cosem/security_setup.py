"""Security Setup (class 64) interface class (Blue Book, clause 4.4.7), version 0.

Attributes: 2 security_policy (enum: 0 none, 1 authenticated, 2 encrypted, 3 authenticated and
encrypted), 3 security_suite (enum: 0 = AES-GCM-128, Suite 0), 4 client_system_title (the system
title of the client of the current association), 5 server_system_title. Methods
(security_activate, global_key_transfer) are out of scope and answer other-reason.
"""

from __future__ import annotations

from openami.protocols.dlms.axdr import Enum
from openami.protocols.dlms.cosem.base import AssociationView, CosemObject, Value
from openami.protocols.dlms.obis import Obis

__all__ = ["SecuritySetup"]


class SecuritySetup(CosemObject):
    """Security setup (class_id 64, version 0); read-only here (keys never leave the meter)."""

    class_id = 64
    attribute_count = 5
    method_count = 2

    def __init__(self, logical_name: Obis, *, server_system_title: bytes, policy: int = 3, suite: int = 0) -> None:
        super().__init__(logical_name)
        self.server_system_title = server_system_title
        self.policy = policy
        self.suite = suite

    def _get(self, attribute: int, view: AssociationView, selector: int | None, parameters: Value) -> Value:
        if attribute == 2:
            return Enum(self.policy)
        if attribute == 3:
            return Enum(self.suite)
        if attribute == 4:
            return view.client_system_title or b""
        return self.server_system_title
