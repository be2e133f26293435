"""Association LN (class 15) interface class (Blue Book, clause 4.4.3), version 1.

One instance, the *current association* 0.0.40.0.0.255, answers for whichever association the
request arrives on: its object_list shows what this client may see, with this client's rights, and
method 1 ``reply_to_HLS_authentication`` carries HLS passes 3 and 4 (IEC 62056-5-3, clause 9.2.7.4).
"""

from __future__ import annotations

from openami.protocols.dlms.axdr import Array, BitString, Enum, Integer, LongUnsigned, Structure, Unsigned
from openami.protocols.dlms.cosem.base import (
    AccessRights,
    AssociationView,
    AttributeAccess,
    CosemAccessError,
    CosemObject,
    Result,
    Value,
    as_bytes,
)
from openami.protocols.dlms.obis import SECURITY_SETUP, Obis

__all__ = ["AssociationLN", "access_rights_data", "object_list_element"]

_SECRET = 7
_DLMS_VERSION = 6


def _oid_structure(arc: int, last: int) -> Structure:
    """{joint-iso-ctt 2, country 16, country-name 756, identified-organization 5, DLMS-UA 8, arc, last}."""
    return Structure(
        (Unsigned(2), Unsigned(16), LongUnsigned(756), Unsigned(5), Unsigned(8), Unsigned(arc), Unsigned(last))
    )


def access_rights_data(obj: CosemObject, rights: AccessRights) -> Structure:
    """access_rights ``{attribute_access: array, method_access: array}`` of one object."""
    attributes = Array(
        Structure((Integer(i), Enum(rights.attributes.get(i, AttributeAccess.NO_ACCESS)), None))
        for i in range(1, obj.attribute_count + 1)
    )
    methods = Array(Structure((Integer(i), Enum(rights.methods.get(i, 0)))) for i in range(1, obj.method_count + 1))
    return Structure((attributes, methods))


def object_list_element(obj: CosemObject, rights: AccessRights) -> Structure:
    """object_list_element ``{class_id, version, logical_name, access_rights}``."""
    return Structure(
        (
            LongUnsigned(obj.class_id),
            Unsigned(obj.version),
            obj.logical_name.to_bytes(),
            access_rights_data(obj, rights),
        )
    )


class AssociationLN(CosemObject):
    """Association LN (class_id 15, version 1).

    Attributes: 2 object_list, 3 associated_partners_id {client_SAP, server_SAP},
    4 application_context_name, 5 xDLMS_context_info, 6 authentication_mechanism_name, 7 secret
    (never readable), 8 association_status, 9 security_setup_reference. Method 1
    reply_to_HLS_authentication(octet-string) returns the server's f(CtoS); methods 2-4 (secret and
    object list changes) are not offered.
    """

    class_id = 15
    version = 1
    attribute_count = 9
    method_count = 4

    def __init__(self, logical_name: Obis, *, security_setup: Obis = SECURITY_SETUP) -> None:
        super().__init__(logical_name)
        self.security_setup = security_setup

    def natural_rights(self) -> AccessRights:
        rights = super().natural_rights()
        attributes = dict(rights.attributes)
        attributes[_SECRET] = AttributeAccess.NO_ACCESS
        return AccessRights(attributes, {1: rights.methods[1]})

    def _get(self, attribute: int, view: AssociationView, selector: int | None, parameters: Value) -> Value:
        info = view.association_info()
        if attribute == 2:
            return Array(object_list_element(obj, rights) for obj, rights in view.visible_objects())
        if attribute == 3:
            return Structure((Integer(view.client_sap), LongUnsigned(info.server_sap)))
        if attribute == 4:
            return _oid_structure(1, info.context_id)
        if attribute == 5:
            conformance = BitString(format(info.conformance, "024b"))
            return Structure(
                (
                    conformance,
                    LongUnsigned(info.max_receive_pdu_size),
                    LongUnsigned(info.max_send_pdu_size),
                    Unsigned(_DLMS_VERSION),
                    Integer(0),
                    b"",
                )
            )
        if attribute == 6:
            return _oid_structure(2, info.mechanism_id)
        if attribute == _SECRET:
            raise CosemAccessError(Result.READ_WRITE_DENIED, "the secret is never readable")
        if attribute == 8:
            return Enum(info.status)
        return self.security_setup.to_bytes()

    def _action(self, method: int, parameters: Value, view: AssociationView) -> Value:
        if method != 1:
            return super()._action(method, parameters, view)
        return view.reply_to_hls(as_bytes(parameters, "reply_to_HLS_authentication"))
