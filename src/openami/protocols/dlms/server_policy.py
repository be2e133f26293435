"""Who may associate with a server, how, and what each client may touch (the server's policies).

IEC 62056-5-3 clause 9.4.2 (application associations) and the DLMS UA interoperability profile:

- management client SAP 1: context LN-with-ciphering, HLS-GMAC (mechanism 5), every xDLMS APDU
  glo-ciphered with Suite 0 (SC 0x30), full rights as each class allows;
- public client SAP 16: context LN, no authentication, no ciphering, read-only access to the clock
  and to the current association's object list, nothing else.

The meter's Suite 0 identity (system title, keys) and its counters live in
:class:`ServerSecurity`, shared by every association of that meter.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from openami.protocols.dlms.acse import ApplicationContext, Mechanism
from openami.protocols.dlms.cosem import AccessRights, AttributeAccess, CosemObject
from openami.protocols.dlms.obis import CLOCK, CURRENT_ASSOCIATION, Obis
from openami.protocols.dlms.security import ReplayGuard, Suite0

__all__ = ["ClientPolicy", "ServerSecurity", "full_rights", "management_client", "public_client", "read_only"]

RightsFunction = Callable[[CosemObject], AccessRights]


def full_rights(obj: CosemObject) -> AccessRights:
    """Everything the object's class allows."""
    return obj.natural_rights()


def read_only(readable: Mapping[tuple[int, Obis], Iterable[int] | None]) -> RightsFunction:
    """Read access to the listed attributes (None = all) of the listed objects, nothing else."""
    allowed = {
        (class_id, name.to_bytes()): (None if attrs is None else frozenset(attrs))
        for (class_id, name), attrs in readable.items()
    }

    def rights(obj: CosemObject) -> AccessRights:
        if obj.key not in allowed:
            return AccessRights()
        attributes = allowed[obj.key]
        ids = range(1, obj.attribute_count + 1) if attributes is None else sorted(attributes)
        return AccessRights({i: AttributeAccess.READ_ONLY for i in ids})

    return rights


@dataclass(frozen=True, slots=True)
class ClientPolicy:
    """How one client SAP must associate and what it may then do."""

    client_sap: int
    mechanism: Mechanism = Mechanism.NONE
    """The authentication the client must use (NONE, or HLS_GMAC for the management client)."""
    ciphered: bool = False
    """Context LN-with-ciphering and Suite 0 glo-ciphering of every xDLMS APDU, both ways."""
    rights: RightsFunction = field(default=full_rights, compare=False)

    @property
    def context(self) -> ApplicationContext:
        return ApplicationContext.LN_CIPHERING if self.ciphered else ApplicationContext.LN


def management_client(sap: int = 1) -> ClientPolicy:
    """SAP 1: HLS-GMAC and Suite 0 ciphering, full rights."""
    return ClientPolicy(sap, Mechanism.HLS_GMAC, ciphered=True, rights=full_rights)


def public_client(sap: int = 16) -> ClientPolicy:
    """SAP 16: no security; reads the clock and the current association's object list only."""
    rights = read_only({(8, CLOCK): None, (15, CURRENT_ASSOCIATION): (1, 2)})
    return ClientPolicy(sap, Mechanism.NONE, ciphered=False, rights=rights)


class ServerSecurity:
    """A server's Suite 0 identity and counters, shared by all its associations.

    ``invocation_counter`` is the next counter the server uses for its own ciphered APDUs (and
    f(CtoS)); each client SAP has a replay guard holding the last counter accepted from it (-1:
    none yet), so a replayed frame is refused even in a later association. Keys are never shown by
    ``repr``.

    Key transfer (Security Setup method 2; Green Book, key transfer): ``kek`` is the master key the new
    keys come wrapped under; :meth:`stage_keys` holds them until :meth:`activate_staged_keys`, which
    the server session calls when the NEXT association starts, so the association that carried the
    transfer keeps answering with its own keys. A new GUEK starts a new invocation counter space:
    the server's counter restarts at 0 and every client's replay guard is cleared.
    """

    def __init__(
        self,
        system_title: bytes,
        guek: bytes,
        gak: bytes,
        *,
        invocation_counter: int = 0,
        client_counters: Mapping[int, int] | None = None,
        kek: bytes | None = None,
    ) -> None:
        if len(system_title) != 8 or len(guek) != 16 or len(gak) != 16 or (kek is not None and len(kek) != 16):
            raise ValueError("Suite 0 needs an 8-byte system title and 16-byte keys")
        self._suite: Suite0 | None = None
        self.system_title = system_title
        self.guek = guek
        self.gak = gak
        self.kek = kek
        self.invocation_counter = invocation_counter
        self._guards = {sap: ReplayGuard(last) for sap, last in (client_counters or {}).items()}
        """Client SAP -> replay guard; ``client_counters`` gives the last counter accepted from each."""
        self._staged: dict[str, bytes] = {}

    @property
    def guek(self) -> bytes:
        return self._guek

    @guek.setter
    def guek(self, key: bytes) -> None:
        self._guek = key
        self._suite = None  # the cached key schedule must never outlive its key

    @property
    def gak(self) -> bytes:
        return self._gak

    @gak.setter
    def gak(self, key: bytes) -> None:
        self._gak = key
        self._suite = None

    @property
    def suite(self) -> Suite0:
        """Suite 0 with the current keys, built on first use (one AES key schedule per meter and key)."""
        suite = self._suite
        if suite is None:
            suite = self._suite = Suite0(self.guek, self.gak)
        return suite

    def next_invocation_counter(self) -> int:
        """The counter for the next ciphered APDU this server sends (then moves on by one)."""
        ic = self.invocation_counter
        self.invocation_counter = ic + 1
        return ic

    def guard(self, client_sap: int) -> ReplayGuard:
        """The replay guard of one client SAP (created on first use, nothing accepted yet)."""
        guard = self._guards.get(client_sap)
        if guard is None:
            guard = self._guards[client_sap] = ReplayGuard()
        return guard

    def expected_client_ic(self, client_sap: int) -> int:
        """The smallest invocation counter the server accepts next from that client."""
        return self.guard(client_sap).last_accepted + 1

    @property
    def has_staged_keys(self) -> bool:
        return bool(self._staged)

    def stage_keys(self, *, guek: bytes | None = None, gak: bytes | None = None, kek: bytes | None = None) -> None:
        """Hold transferred keys (16 bytes each) for the next association; a later transfer replaces them."""
        staged = {name: key for name, key in (("guek", guek), ("gak", gak), ("kek", kek)) if key is not None}
        if any(len(key) != 16 for key in staged.values()):
            raise ValueError("Suite 0 keys are 16 bytes")  # the length only, never the key
        self._staged.update(staged)

    def activate_staged_keys(self) -> bool:
        """Make staged keys current (at the start of an association); True if any were staged."""
        staged, self._staged = self._staged, {}
        if not staged:
            return False
        if "guek" in staged and staged["guek"] != self.guek:
            self.invocation_counter = 0  # a new key is a new counter space (Green Book: a counter belongs to its key)
            self._guards.clear()
        self.guek = staged.get("guek", self.guek)
        self.gak = staged.get("gak", self.gak)
        self.kek = staged.get("kek", self.kek)
        self._suite = None
        return True

    def __repr__(self) -> str:
        return f"ServerSecurity(system_title={self.system_title.hex()}, keys=***)"
