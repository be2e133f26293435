"""Accounts, passwords, lockout, tokens and client certificates, on SQLite and PostgreSQL.

The clock is injected (``now=``): lockout and unlock are checked without waiting.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from openami.db import tables as t
from openami.db import tokens as token_repo
from openami.db.meters import upsert_topology
from openami.domain.meters import Feeder, Phase, Premise, ServicePoint, Substation, Transformer
from openami.errors import Conflict, InvalidInput, PermissionDenied, Unauthenticated
from openami.security import audit, events
from openami.security import identity as ident
from openami.security.identity import LOGIN_REFUSED, NewAccount, RoleGrant
from openami.security.policy import ALL_SCOPES, RequestScope, Role
from openami.services import identity as identity_services
from openami.settings import IdentitySettings

NOW = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
FAST = IdentitySettings(
    argon2_time_cost=1, argon2_memory_kib=1024, argon2_parallelism=1, lockout_threshold=3, lockout_minutes=10
)
PASSWORD = "correct horse battery"
ADMIN = RequestScope("cli:test", frozenset({Role.SECURITY_ADMIN}), frozenset({ALL_SCOPES}))


def _topology(engine: Engine) -> None:
    with engine.begin() as conn:
        upsert_topology(
            conn,
            substations=[Substation("SS01", "north")],
            feeders=[Feeder("SS01-F1", "SS01")],
            transformers=[Transformer("SS01-F1-T1", "SS01-F1", Phase.A)],
            premises=[Premise("P1", "1 Main St"), Premise("P2", "2 Main St")],
            service_points=[ServicePoint("SP1", "P1", "SS01-F1-T1", Phase.A)],
        )


def _user(engine: Engine, username: str = "alice", *roles: RoleGrant, premises: tuple[str, ...] = ()) -> int:
    grants = roles or (RoleGrant(Role.AMI_OPERATOR),)
    with engine.begin() as conn:
        return ident.create_account(
            conn, NewAccount(username, grants, password=PASSWORD, premises=premises), settings=FAST, now=NOW
        )


def _login(engine: Engine, username: str, password: str, now: datetime) -> ident.Principal:
    """authenticate() as services do: commit what a failure leaves behind, then re-raise."""
    with engine.connect() as conn:
        try:
            return ident.authenticate(conn, username, password, now=now, settings=FAST)
        finally:
            conn.commit()


def test_passwords_are_stored_as_argon2id_never_in_clear(engine: Engine) -> None:
    _user(engine)
    with engine.connect() as conn:
        stored = conn.execute(sa.select(t.accounts.c.password_hash)).scalar_one()
    assert stored.startswith("$argon2id$v=19$m=1024,t=1,p=1$")
    assert PASSWORD not in stored
    assert repr(NewAccount("x", (), password=PASSWORD)).count(PASSWORD) == 0


def test_login_returns_the_principal_with_its_roles_and_audits_it(engine: Engine) -> None:
    _user(engine, "alice", RoleGrant(Role.AMI_OPERATOR), RoleGrant(Role.AUDITOR))
    principal = _login(engine, "alice", PASSWORD, NOW)
    assert principal.actor == "user:alice"
    assert principal.roles == {Role.AMI_OPERATOR, Role.AUDITOR}
    with engine.connect() as conn:
        (entry,) = audit.query(conn, action="auth.login")
        last = conn.execute(sa.select(t.accounts.c.last_login_at)).scalar_one()
    assert (entry.actor, entry.outcome) == ("user:alice", "ok")
    assert last == NOW


def test_unknown_user_wrong_password_locked_and_disabled_get_the_same_error(engine: Engine) -> None:
    _user(engine, "alice")
    _user(engine, "bob")
    with engine.begin() as conn:
        ident.set_enabled(conn, "bob", False)
    messages = []
    for username, password in (("nobody", PASSWORD), ("alice", "wrong password!"), ("bob", PASSWORD), ("B@D\n", "x")):
        with pytest.raises(Unauthenticated) as caught:
            _login(engine, username, password, NOW)
        messages.append((caught.value.message, caught.value.code, caught.value.http_status))
    assert set(messages) == {(LOGIN_REFUSED, "unauthenticated", 401)}
    with engine.connect() as conn:
        failed = audit.query(conn, action="auth.login", outcome="failed")
        raised = events.list_events(conn, kind="api.login-failed")
    assert sorted(e.details["reason"] for e in failed) == ["no-login", "unknown-user", "unknown-user", "wrong-password"]
    assert "user:?" in {e.actor for e in failed}  # malformed input is never echoed into the audit log
    assert len(raised) == 4


def test_lockout_after_n_consecutive_failures_and_unlock_after_t(engine: Engine) -> None:
    _user(engine, "alice")
    for attempt in range(FAST.lockout_threshold):
        with pytest.raises(Unauthenticated):
            _login(engine, "alice", "wrong password!", NOW + timedelta(seconds=attempt))
    # locked: the right password is refused with the same message, and does not count
    with pytest.raises(Unauthenticated, match=LOGIN_REFUSED):
        _login(engine, "alice", PASSWORD, NOW + timedelta(minutes=9))
    with engine.connect() as conn:
        assert len(events.list_events(conn, kind="api.lockout")) == 1
        account = ident.get_account(conn, "alice")
    assert account.locked_until == NOW + timedelta(seconds=FAST.lockout_threshold - 1, minutes=10)
    assert _login(engine, "alice", PASSWORD, NOW + timedelta(minutes=10, seconds=3)).username == "alice"
    with engine.connect() as conn:
        account = ident.get_account(conn, "alice")
    assert (account.failed_logins, account.locked_until) == (0, None)


def test_a_success_resets_the_failure_count(engine: Engine) -> None:
    _user(engine, "alice")
    for _ in range(3):
        for _ in range(FAST.lockout_threshold - 1):
            with pytest.raises(Unauthenticated):
                _login(engine, "alice", "wrong password!", NOW)
        _login(engine, "alice", PASSWORD, NOW)
    with engine.connect() as conn:
        assert events.list_events(conn, kind="api.lockout") == []


def test_a_hash_made_with_old_parameters_is_upgraded_at_login(engine: Engine) -> None:
    _user(engine, "alice")
    stronger = FAST.model_copy(update={"argon2_time_cost": 2})
    with engine.connect() as conn:
        ident.authenticate(conn, "alice", PASSWORD, now=NOW, settings=stronger)
        conn.commit()
        stored = conn.execute(sa.select(t.accounts.c.password_hash)).scalar_one()
    assert stored.startswith("$argon2id$v=19$m=1024,t=2,p=1$")


def test_role_assignments_are_validated(engine: Engine) -> None:
    _topology(engine)
    refused = [
        NewAccount("x", [RoleGrant(Role.NETWORK_OPERATOR)]),  # needs an area
        NewAccount("x", [RoleGrant(Role.NETWORK_OPERATOR, "SS99")]),  # unknown area
        NewAccount("x", [RoleGrant(Role.AMI_OPERATOR, "SS01")]),  # takes no area
        NewAccount("x", [RoleGrant(Role.AUDITOR), RoleGrant(Role.AUDITOR)]),
        NewAccount("x", [RoleGrant(Role.CUSTOMER)]),  # a customer needs premises...
        NewAccount("x", [RoleGrant(Role.CUSTOMER)], premises=("P9",)),  # ...that exist
        NewAccount("x", [RoleGrant(Role.AUDITOR)], premises=("P1",)),  # premises only for customers
        NewAccount("Bad Name", [RoleGrant(Role.AUDITOR)]),
        NewAccount("x", [RoleGrant(Role.AUDITOR)], password="short"),
        NewAccount("x", [RoleGrant(Role.AUDITOR)], password=PASSWORD, kind="client"),
    ]
    with engine.begin() as conn:
        for spec in refused:
            with pytest.raises(InvalidInput):
                ident.create_account(conn, spec, settings=FAST, now=NOW)
        spec = NewAccount("carol", [RoleGrant(Role.CUSTOMER)], premises=("P1", "P2"))
        ident.create_account(conn, spec, settings=FAST, now=NOW)
        with pytest.raises(Conflict):
            ident.create_account(conn, spec, settings=FAST, now=NOW)
        principal = ident.load_principal(conn, ident.get_account(conn, "carol").id)
    assert principal is not None
    assert principal.scope().premises == {"P1", "P2"}


def test_a_token_carries_the_owners_current_roles(engine: Engine) -> None:
    _topology(engine)
    _user(engine, "dno", RoleGrant(Role.NETWORK_OPERATOR, "SS01"))
    with engine.begin() as conn:
        principal = ident.load_principal(conn, ident.get_account(conn, "dno").id)
        assert principal is not None
        issued = ident.issue_token(conn, principal, ttl=timedelta(hours=1), now=NOW, scopes=["meter.list"])
    with engine.connect() as conn:
        resolved = ident.resolve_token(conn, issued.token, now=NOW)
    assert resolved is not None
    scope, token_id = resolved
    assert (scope.principal, scope.roles, scope.area, scope.scopes) == (
        "user:dno", {Role.NETWORK_OPERATOR}, "SS01", {"meter.list"},
    )  # fmt: skip
    assert token_id == issued.id
    with engine.begin() as conn:  # a role change shows at the next use; disabling stops the token
        ident.set_roles(conn, "dno", [RoleGrant(Role.AUDITOR)], now=NOW)
        refreshed = ident.resolve_token(conn, issued.token, now=NOW)
        assert refreshed is not None
        assert refreshed[0].roles == {Role.AUDITOR}
        assert refreshed[0].area is None
        ident.set_enabled(conn, "dno", False)
        assert ident.resolve_token(conn, issued.token, now=NOW) is None
        assert ident.resolve_token(conn, issued.token, now=NOW + timedelta(hours=2)) is None


def test_token_scopes_must_be_policy_actions_and_ownerless_tokens_grant_nothing(engine: Engine) -> None:
    _user(engine, "alice")
    with engine.begin() as conn:
        principal = ident.load_principal(conn, ident.get_account(conn, "alice").id)
        assert principal is not None
        with pytest.raises(InvalidInput):
            ident.issue_token(conn, principal, ttl=None, now=NOW, scopes=["meters:read"])
        _, ownerless = token_repo.create_token(conn, "stray", [ALL_SCOPES], now=NOW)
        assert ident.resolve_token(conn, ownerless, now=NOW) is None


def test_first_run_admin_account_and_token(engine: Engine) -> None:
    token = identity_services.ensure_admin_token(engine, now=NOW)
    assert token is not None
    assert identity_services.ensure_admin_token(engine, now=NOW) is None
    with engine.connect() as conn:
        resolved = ident.resolve_token(conn, token, now=NOW + timedelta(days=400))
        admin = ident.get_account(conn, "admin")
    assert resolved is not None
    assert resolved[0].roles == {Role.SECURITY_ADMIN, Role.AMI_OPERATOR}
    assert not admin.has_password  # no password login for the first-run account


def test_an_admin_token_from_before_accounts_is_adopted(engine: Engine) -> None:
    with engine.begin() as conn:
        _, legacy = token_repo.create_token(conn, "admin", [ALL_SCOPES], now=NOW)
    assert identity_services.ensure_admin_token(engine, now=NOW) is None
    with engine.connect() as conn:
        resolved = ident.resolve_token(conn, legacy, now=NOW)
    assert resolved is not None
    assert resolved[0].principal == "user:admin"


def test_client_certificate_maps_to_its_accounts_roles(engine: Engine) -> None:
    fingerprint = "AB:" * 31 + "CD"
    identity_services.create_account(
        engine, ADMIN, NewAccount("cis", [RoleGrant(Role.BILLING_CIS)], kind="client"), settings=FAST, now=NOW
    )
    identity_services.register_client(engine, ADMIN, "cis", subject_cn="cis.utility.example", fingerprint=fingerprint)
    with engine.connect() as conn:
        principal = ident.principal_for_certificate(conn, "cis.utility.example", fingerprint.lower(), now=NOW)
    assert (principal.actor, principal.roles) == ("client:cis", {Role.BILLING_CIS})
    refused = [
        ("cis.utility.example", "00" * 32),  # unknown certificate
        ("other.example", fingerprint),  # right certificate, wrong name
        ("cis.utility.example", "not-hex"),  # malformed
    ]
    for subject_cn, digest in refused:
        with engine.connect() as conn:
            with pytest.raises(Unauthenticated):
                ident.principal_for_certificate(conn, subject_cn, digest, now=NOW)
            conn.commit()
    with engine.connect() as conn:
        assert len(audit.query(conn, action="auth.certificate", outcome="failed")) == 3
        assert len(events.list_events(conn, kind="api.bad-certificate")) == 3
    with pytest.raises(Conflict):
        identity_services.register_client(engine, ADMIN, "cis", subject_cn="x", fingerprint=fingerprint)


def test_account_administration_needs_security_admin_and_is_audited(engine: Engine) -> None:
    operator = RequestScope("user:op", frozenset({Role.AMI_OPERATOR}), frozenset({ALL_SCOPES}))
    spec = NewAccount("eve", [RoleGrant(Role.SECURITY_ADMIN)], password=PASSWORD)
    with pytest.raises(PermissionDenied):
        identity_services.create_account(engine, operator, spec, settings=FAST, now=NOW)
    identity_services.create_account(engine, ADMIN, spec, settings=FAST, now=NOW)
    identity_services.set_roles(engine, ADMIN, "eve", [RoleGrant(Role.AUDITOR)], now=NOW)
    identity_services.set_enabled(engine, ADMIN, "eve", False, now=NOW)
    with engine.connect() as conn:
        denied = audit.query(conn, actor="user:op", action="accounts.manage", outcome="denied")
        changes = audit.query(conn, actor="cli:test", action="accounts.manage", outcome="ok")
        stored = conn.execute(sa.select(sa.func.count()).select_from(t.accounts)).scalar_one()
    assert len(denied) == 1
    assert [c.details["change"] for c in reversed(changes)] == ["create", "roles", "disable"]
    assert stored == 1
