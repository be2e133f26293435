"""The API over real HTTPS on loopback with mutual TLS, on SQLite and PostgreSQL (docs/adr/0004).

uvicorn serves with the server certificate the utility CA issues on first run; httpx trusts that CA
(never ``verify=False``). Refusals and where they happen:

- unknown (self-signed, other CA), expired, revoked, wrong-purpose certificates and, in
  ``required`` mode, no certificate: refused in the TLS handshake (the client sees a TLS alert; with
  TLS 1.3 often only on its first read) and recorded as security event ``api.bad-certificate``;
- a certificate revoked while its connection is kept alive, or one that is valid but registered to
  no system client: 401 problem+json on the next request, also ``api.bad-certificate``.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy.engine import Engine

from openami.api.app import create_app
from openami.api.tls import uvicorn_tls_options
from openami.db.tables import audit_log, security_events
from openami.security import identity
from openami.security.identity import NewAccount, RoleGrant
from openami.security.policy import Role
from openami.security.tls import ServerContexts
from openami.services import pki as pki_services
from openami.services.bootstrap import build_platform, stop_platform
from openami.services.context import Platform
from openami.services.pki import CertificateRequest, PlainHttpRefused, Profile, RevocationReason
from openami.settings import ApiSettings, IdentitySettings, Settings, TlsSettings

PROBLEM = "application/problem+json"
ACTOR = "cli:test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class TlsApi:
    base: str
    platform: Platform
    settings: Settings
    tmp: Path

    @property
    def ca_file(self) -> Path:
        return pki_services.ca_files(self.settings).cert

    def issue(
        self, name: str, profile: Profile = Profile.CLIENT, *, now: datetime | None = None, days: int = 30
    ) -> Path:
        """Issue a certificate into a directory of its own; returns that directory."""
        out = self.tmp / f"issued-{name}-{profile.value}"
        dns = ("localhost",) if profile is Profile.SERVER else ()
        request = CertificateRequest(profile, name, dns_names=dns, valid_days=days)
        pki_services.issue(self.platform.engine, self.settings, request, out, now=now or datetime.now(UTC), actor=ACTOR)
        return out

    def register(self, name: str, out: Path) -> None:
        """Make the certificate in ``out`` a system client's (account ``name``, billing/CIS role)."""
        cert = x509.load_pem_x509_certificate(next(out.glob("*.crt.pem")).read_bytes())
        fingerprint = cert.fingerprint(hashes.SHA256()).hex()
        now = datetime.now(UTC)
        with self.platform.engine.begin() as conn:
            spec = NewAccount(name, [RoleGrant(Role.BILLING_CIS)], kind="client")
            identity.create_account(conn, spec, settings=IdentitySettings(), now=now)
            identity.register_system_client(conn, name, subject_cn=name, fingerprint=fingerprint, now=now)

    def client(self, out: Path | None = None) -> httpx.AsyncClient:
        context = ssl.create_default_context(cafile=self.ca_file)  # trusts our CA, verifies the server
        if out is not None:
            context.load_cert_chain(next(out.glob("*.crt.pem")), next(out.glob("*.key.pem")))
        return httpx.AsyncClient(base_url=self.base, verify=context, timeout=10)

    def bad_certificate_reasons(self) -> list[str]:
        with self.platform.engine.connect() as conn:
            rows = conn.execute(
                sa.select(security_events.c.details)
                .where(security_events.c.kind == "api.bad-certificate")
                .order_by(security_events.c.id)
            ).all()
        return [json.loads(row.details).get("reason", "not registered") for row in rows]

    async def wait_for_reason(self, expected: str) -> None:
        """Handshake refusals are recorded off the event loop: poll with a deadline."""
        deadline = asyncio.get_running_loop().time() + 10
        while not any(expected in reason for reason in self.bad_certificate_reasons()):
            assert asyncio.get_running_loop().time() < deadline, self.bad_certificate_reasons()
            await asyncio.sleep(0.05)


async def _serve(settings: Settings, engine: Engine) -> AsyncIterator[tuple[Platform, str]]:
    platform = build_platform(settings, engine=engine)
    server_tls = pki_services.prepare_server_tls(platform)
    assert server_tls is not None
    config = uvicorn.Config(
        create_app(platform), host="127.0.0.1", port=settings.api.port, log_level="warning", lifespan="off",
        **uvicorn_tls_options(server_tls),
    )  # fmt: skip
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    deadline = asyncio.get_running_loop().time() + 10
    while not server.started:
        assert asyncio.get_running_loop().time() < deadline, "uvicorn did not start"
        await asyncio.sleep(0.02)
    try:
        yield platform, f"https://127.0.0.1:{settings.api.port}"
    finally:
        server.should_exit = True
        await task
        await stop_platform(platform)


def _settings(tmp_path: Path, client_auth: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "var",
        master_key=bytes(range(32)),  # type: ignore[arg-type]
        api=ApiSettings(host="127.0.0.1", port=_free_port()),
        tls=TlsSettings(mode="https", client_auth=client_auth),  # type: ignore[arg-type]
    )


@pytest.fixture
async def api(engine: Engine, tmp_path: Path) -> AsyncIterator[TlsApi]:
    settings = _settings(tmp_path, "optional")
    async for platform, base in _serve(settings, engine):
        yield TlsApi(base, platform, settings, tmp_path)


@pytest.fixture
async def strict_api(engine: Engine, tmp_path: Path) -> AsyncIterator[TlsApi]:
    settings = _settings(tmp_path, "required")
    async for platform, base in _serve(settings, engine):
        yield TlsApi(base, platform, settings, tmp_path)


def _self_signed(tmp_path: Path, *, issuer_key: ec.EllipticCurvePrivateKey | None = None) -> Path:
    """A client certificate (clientAuth) that our CA never issued: self-signed, or by another CA key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cis")])
    other = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "openami utility CA")])  # same name, other key
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name if issuer_key is None else other)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key((issuer_key or key).public_key()), critical=False
        )
        .sign(issuer_key or key, hashes.SHA256())
    )
    out = tmp_path / f"foreign-{'self' if issuer_key is None else 'other-ca'}"
    out.mkdir()
    (out / "cis.crt.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / "cis.key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return out


async def test_server_certificate_is_issued_by_the_ca_and_trusted(api: TlsApi) -> None:
    async with api.client() as client:  # no client certificate, no token: TLS works, the API says 401
        response = await client.get("/v1/auth/me")
    assert response.status_code == 401
    assert response.headers["content-type"] == PROBLEM
    async with api.client() as client:
        assert (await client.get("/health")).json()["status"] == "ok"
    servers = pki_services.list_certificates_of(api.platform.engine, Profile.SERVER)
    assert [s.common_name for s in servers] == ["openami-api"]


async def test_valid_client_certificate_authenticates_the_request(api: TlsApi) -> None:
    out = api.issue("cis")
    api.register("cis", out)
    async with api.client(out) as client:
        response = await client.get("/v1/auth/me")
    assert response.status_code == 200, response.text
    assert response.json()["principal"] == "client:cis"
    with api.platform.engine.connect() as conn:
        uses = conn.execute(
            sa.select(audit_log.c.actor).where(audit_log.c.action == "auth.certificate", audit_log.c.outcome == "ok")
        ).all()
    assert [u.actor for u in uses] == ["client:cis"]


async def test_bearer_token_still_works_when_client_auth_is_optional(api: TlsApi) -> None:
    from openami.services.identity import ensure_admin_token  # noqa: PLC0415

    token = ensure_admin_token(api.platform.engine, now=datetime.now(UTC))
    assert token is not None
    async with api.client() as client:
        response = await client.get("/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert response.json()["principal"] == "user:admin"


@pytest.mark.parametrize("issuer", ["self-signed", "other-ca"])
async def test_unknown_certificate_is_refused_in_the_handshake(api: TlsApi, issuer: str) -> None:
    other_ca = None if issuer == "self-signed" else ec.generate_private_key(ec.SECP256R1())
    out = _self_signed(api.tmp, issuer_key=other_ca)
    async with api.client(out) as client:
        with pytest.raises(httpx.TransportError):
            await client.get("/v1/auth/me")
    await api.wait_for_reason("self-signed" if issuer == "self-signed" else "unable to get local issuer")


async def test_expired_certificate_is_refused_in_the_handshake(api: TlsApi) -> None:
    out = api.issue("old", now=datetime.now(UTC) - timedelta(days=10), days=2)
    api.register("old", out)
    async with api.client(out) as client:
        with pytest.raises(httpx.TransportError):
            await client.get("/v1/auth/me")
    await api.wait_for_reason("certificate has expired")


async def test_revoked_certificate_is_refused_from_the_next_connection_without_restart(api: TlsApi) -> None:
    out = api.issue("cis")
    api.register("cis", out)
    async with api.client(out) as kept_alive:
        assert (await kept_alive.get("/v1/auth/me")).status_code == 200
        serial = x509.load_pem_x509_certificate((out / "cis.crt.pem").read_bytes()).serial_number
        pki_services.revoke(
            api.platform.engine, api.settings, format(serial, "X"), RevocationReason.KEY_COMPROMISE,
            now=datetime.now(UTC), actor=ACTOR,
        )  # fmt: skip
        # a connection opened before the revocation: the registry check answers 401 on its next request
        late = await kept_alive.get("/v1/auth/me")
        assert late.status_code == 401
        assert late.headers["content-type"] == PROBLEM
        assert "revoked" in late.json()["detail"]
    async with api.client(out) as client:  # a new connection: the handshake checks the new CRL
        with pytest.raises(httpx.TransportError):
            await client.get("/v1/auth/me")
    await api.wait_for_reason("certificate revoked")
    assert "revoked" in api.bad_certificate_reasons()  # the kept-alive request's refusal


@pytest.mark.parametrize("profile", [Profile.SERVER, Profile.COMMAND_AUTHORITY])
async def test_certificates_of_other_profiles_cannot_authenticate_a_client(api: TlsApi, profile: Profile) -> None:
    out = api.issue("wrong-purpose", profile)
    async with api.client(out) as client:
        with pytest.raises(httpx.TransportError):
            await client.get("/v1/auth/me")
    await api.wait_for_reason("unsuitable certificate purpose")


async def test_valid_certificate_of_no_registered_client_is_401(api: TlsApi) -> None:
    out = api.issue("stranger")
    async with api.client(out) as client:
        response = await client.get("/v1/auth/me")
    assert response.status_code == 401
    assert response.headers["content-type"] == PROBLEM
    assert api.bad_certificate_reasons() == ["not registered"]  # raised by identity.principal_for_certificate


async def test_required_client_auth_refuses_a_connection_without_certificate(strict_api: TlsApi) -> None:
    async with strict_api.client() as client:
        with pytest.raises(httpx.TransportError):
            await client.get("/health")
    await strict_api.wait_for_reason("no client certificate")
    out = strict_api.issue("cis")
    strict_api.register("cis", out)
    async with strict_api.client(out) as client:
        assert (await client.get("/v1/auth/me")).status_code == 200


async def test_plain_http_to_the_https_port_is_not_served(api: TlsApi) -> None:
    async with httpx.AsyncClient(base_url=api.base.replace("https://", "http://"), timeout=5) as client:
        with pytest.raises(httpx.TransportError):
            await client.get("/health")
    assert api.bad_certificate_reasons() == []  # not a certificate problem: logged, not an event


# -- serving decisions -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "mode", "https"),
    [("127.0.0.1", "auto", False), ("::1", "http", False), ("localhost", "auto", False), ("127.0.0.1", "https", True)],
)
def test_plain_http_is_allowed_on_loopback_only(
    engine: Engine, tmp_path: Path, host: str, mode: str, https: bool
) -> None:
    settings = Settings(
        data_dir=tmp_path, master_key=bytes(range(32)), api=ApiSettings(host=host), tls=TlsSettings(mode=mode)
    )  # type: ignore[arg-type]
    platform = build_platform(settings, engine=engine)
    assert (pki_services.prepare_server_tls(platform) is not None) is https


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "::", "api.example.net"])
def test_plain_http_on_a_non_loopback_address_is_refused(engine: Engine, tmp_path: Path, host: str) -> None:
    settings = Settings(data_dir=tmp_path, api=ApiSettings(host=host), tls=TlsSettings(mode="http"))
    platform = build_platform(settings, engine=engine)
    with pytest.raises(PlainHttpRefused, match="not a loopback address"):
        pki_services.prepare_server_tls(platform)
    assert not pki_services.ca_files(settings).directory.exists()


def test_https_on_a_wildcard_address_issues_a_certificate_for_the_configured_names(
    engine: Engine, tmp_path: Path
) -> None:
    tls = TlsSettings(mode="auto", server_names=["api.example.net", "192.0.2.10"])
    settings = Settings(data_dir=tmp_path, master_key=bytes(range(32)), api=ApiSettings(host="0.0.0.0"), tls=tls)  # type: ignore[arg-type]
    server_tls = pki_services.prepare_server_tls(build_platform(settings, engine=engine))
    assert server_tls is not None
    cert = x509.load_pem_x509_certificate(server_tls.contexts.files.cert_file.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "api.example.net" in sans.get_values_for_type(x509.DNSName)
    assert "192.0.2.10" in [str(a) for a in sans.get_values_for_type(x509.IPAddress)]
    assert b"ENCRYPTED" in server_tls.contexts.files.key_file.read_bytes()  # the server key is encrypted at rest too
    again = pki_services.prepare_server_tls(build_platform(settings, engine=engine))  # second start: same certificate
    assert again is not None
    assert again.contexts.files.cert_file.read_bytes() == server_tls.contexts.files.cert_file.read_bytes()


def test_cli_run_refuses_plain_http_on_a_non_loopback_address(db_url: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAMI_")}
    env.update(OPENAMI_DATA_DIR=str(tmp_path), OPENAMI_DATABASE_URL=db_url, OPENAMI_TLS__MODE="http")
    command = [sys.executable, "-m", "openami.cli", "run", "--host", "0.0.0.0", "--port", "0"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1
    assert "refusing to serve plain HTTP on 0.0.0.0" in result.stderr


def test_crl_is_renewed_before_it_expires(engine: Engine, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, master_key=bytes(range(32)), tls=TlsSettings(mode="https"))  # type: ignore[arg-type]
    server_tls = pki_services.prepare_server_tls(build_platform(settings, engine=engine))
    assert server_tls is not None
    first = server_tls.contexts.crl_next_update
    assert first is not None
    later: list[datetime] = [first + timedelta(minutes=1)]  # past its next update: renewed before the handshake
    renewals: list[datetime] = []

    def renew() -> None:
        renewals.append(later[0])
        from openami.security.keystore import master_key_provider  # noqa: PLC0415

        pki_services.renew_crl(engine, settings, master_key_provider(settings), now=later[0])

    clock: Callable[[], datetime] = lambda: later[0]  # noqa: E731
    contexts = ServerContexts(server_tls.contexts.files, "optional", renew_crl=renew, clock=clock)
    contexts.current()
    assert renewals == [later[0]]
    assert contexts.crl_next_update is not None
    assert contexts.crl_next_update > later[0]


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_a_resumed_session_cannot_skip_the_revocation_check(api: TlsApi, version: ssl.TLSVersion) -> None:
    out = api.issue("cis")
    api.register("cis", out)
    context = ssl.create_default_context(cafile=api.ca_file)
    context.load_cert_chain(out / "cis.crt.pem", out / "cis.key.pem")
    context.minimum_version = context.maximum_version = version
    port = int(api.base.rsplit(":", 1)[1])

    def exchange(session: ssl.SSLSession | None) -> tuple[ssl.SSLSession | None, bool, bytes]:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1", session=session) as tls,
        ):
            tls.sendall(b"GET /v1/auth/me HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            answer = tls.recv(65536)
            return tls.session, tls.session_reused, answer

    session, _, answer = await asyncio.to_thread(exchange, None)
    assert answer.startswith(b"HTTP/1.1 200")
    _, reused, answer = await asyncio.to_thread(exchange, session)
    assert answer.startswith(b"HTTP/1.1 200")
    # TLS 1.2 resumes by session id (no certificate check on resumption); TLS 1.3 gets no tickets at all
    assert reused is (version is ssl.TLSVersion.TLSv1_2)
    serial = x509.load_pem_x509_certificate((out / "cis.crt.pem").read_bytes()).serial_number
    pki_services.revoke(
        api.platform.engine, api.settings, format(serial, "X"), RevocationReason.KEY_COMPROMISE,
        now=datetime.now(UTC), actor=ACTOR,
    )  # fmt: skip
    try:
        _, _, answer = await asyncio.to_thread(exchange, session)
    except (ssl.SSLError, ConnectionError):
        answer = b""
    assert answer == b""  # refused (TLS 1.3 clients may see the alert as a closed connection)
    await api.wait_for_reason("certificate revoked")
