"""``openami accounts``: create (hidden prompt or --password-stdin), list, disable, token; on both databases."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from openami.cli.accounts import accounts
from openami.db.engine import create_engine
from openami.security import audit
from openami.security import identity as ident
from openami.security.policy import Role

PASSWORD = "correct horse battery"


@pytest.fixture
def run(db_url: str, tmp_path: Path) -> Callable[..., Result]:
    env = {
        "OPENAMI_DATABASE_URL": db_url,
        "OPENAMI_DATA_DIR": str(tmp_path),
        "OPENAMI_IDENTITY__ARGON2_TIME_COST": "1",
        "OPENAMI_IDENTITY__ARGON2_MEMORY_KIB": "1024",
        "OPENAMI_IDENTITY__ARGON2_PARALLELISM": "1",
    }

    def invoke(*args: str, stdin: str | None = None) -> Result:
        return CliRunner().invoke(accounts, list(args), input=stdin, env=env, catch_exceptions=False)

    return invoke


def test_create_list_token_and_disable(run: Callable[..., Result], db_url: str) -> None:
    created = run("create", "alice", "--role", "ami_operator", "--role", "auditor", "--password-stdin", stdin=PASSWORD)
    assert created.exit_code == 0, created.output
    prompted = run("create", "bob", "--role", "billing_cis", stdin=f"{PASSWORD}\n{PASSWORD}\n")
    assert prompted.exit_code == 0, prompted.output
    assert PASSWORD not in prompted.output  # hidden input
    listing = json.loads(run("list", "--json").output)
    assert [(a["username"], a["roles"]) for a in listing] == [
        ("alice", ["ami_operator", "auditor"]), ("bob", ["billing_cis"]),
    ]  # fmt: skip
    issued = run("token", "alice", "--ttl", "1h")
    assert issued.exit_code == 0, issued.output
    token = issued.stdout.strip().splitlines()[-1]
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            resolved = ident.resolve_token(conn, token, now=datetime.now(UTC))
            assert resolved is not None
            assert resolved[0].roles == {Role.AMI_OPERATOR, Role.AUDITOR}
        assert run("disable", "alice").exit_code == 0
        with engine.connect() as conn:
            assert ident.resolve_token(conn, token, now=datetime.now(UTC)) is None
            changes = audit.query(conn, actor="cli:local-admin", action="accounts.manage")
    finally:
        engine.dispose()
    assert sorted(c.details["change"] for c in changes) == ["create", "create", "disable"]


def test_bad_input_is_a_clear_error(run: Callable[..., Result]) -> None:
    no_area = run("create", "dno", "--role", "network_operator", "--password-stdin", stdin=PASSWORD)
    assert no_area.exit_code == 1
    assert "needs area" in no_area.output
    short = run("create", "eve", "--role", "auditor", "--password-stdin", stdin="short")
    assert short.exit_code == 1
    assert "at least 12 characters" in short.output
    assert run("create", "x", "--role", "wizard", "--password-stdin", stdin=PASSWORD).exit_code == 2
    assert run("token", "nobody").exit_code == 1
    assert run("token", "x", "--ttl", "forever").exit_code == 2
