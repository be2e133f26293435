"""COSEM interface classes for the server role, and the logical device that dispatches to them."""

from openami.protocols.dlms.cosem.association import AssociationLN
from openami.protocols.dlms.cosem.base import (
    AccessRights,
    AssociationInfo,
    AssociationView,
    AttributeAccess,
    CosemAccessError,
    CosemObject,
    MethodAccess,
    Result,
    Value,
)
from openami.protocols.dlms.cosem.clock import Clock
from openami.protocols.dlms.cosem.command_gateway import GatewaySite, SignedCommandGateway, SignedDisconnectControl
from openami.protocols.dlms.cosem.data import Data, Register
from openami.protocols.dlms.cosem.device import LogicalDevice, Outcome
from openami.protocols.dlms.cosem.disconnect import ControlState, DisconnectControl
from openami.protocols.dlms.cosem.limiter import Limiter
from openami.protocols.dlms.cosem.profile import (
    CaptureObject,
    EncodedRows,
    ListProfileSource,
    ProfileGeneric,
    ProfileSource,
    Row,
)
from openami.protocols.dlms.cosem.push_setup import PushSetup
from openami.protocols.dlms.cosem.security_setup import SecuritySetup

__all__ = [
    "AccessRights",
    "AssociationInfo",
    "AssociationLN",
    "AssociationView",
    "AttributeAccess",
    "CaptureObject",
    "Clock",
    "ControlState",
    "CosemAccessError",
    "CosemObject",
    "Data",
    "DisconnectControl",
    "EncodedRows",
    "GatewaySite",
    "Limiter",
    "ListProfileSource",
    "LogicalDevice",
    "MethodAccess",
    "Outcome",
    "ProfileGeneric",
    "ProfileSource",
    "PushSetup",
    "Register",
    "Result",
    "Row",
    "SecuritySetup",
    "SignedCommandGateway",
    "SignedDisconnectControl",
    "Value",
]
