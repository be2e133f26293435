"""Bearer-token authentication: produces the frozen RequestScope every service function takes.

Routers that need a caller declare ``Scope``; the only public routes are health, version and the
login itself. A missing, malformed, unknown, revoked or expired token is a 401 problem, and every
request's token use (or refusal) is audited by ``services.identity.authenticate_bearer``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from openami.services import identity as identity_services
from openami.services import pki as pki_services
from openami.services.context import Platform, RequestScope

# Declares the scheme in OpenAPI; the header itself is parsed (strictly) by the identity service.
_bearer = HTTPBearer(auto_error=False, description="API token: POST /v1/auth/token, or the first-run admin token")


def get_platform(request: Request) -> Platform:
    platform: Platform = request.app.state.platform
    return platform


def require_scope(
    request: Request,
    platform: Annotated[Platform, Depends(get_platform)],
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> RequestScope:
    """Fail closed: no token, a malformed, unknown, revoked or expired one is a 401 problem."""
    by_certificate = _certificate_scope(request, platform)
    if by_certificate is not None:
        return by_certificate
    return identity_services.authenticate_bearer(
        platform.engine,
        request.headers.getlist("authorization"),
        method=request.method,
        path=request.url.path,
        now=platform.now(),
    )


def _certificate_scope(request: Request, platform: Platform) -> RequestScope | None:
    """Mutual TLS: a request with no Authorization header, on a connection whose client certificate
    the TLS handshake verified, is authenticated by that certificate (docs/adr/0004). None: no such
    certificate, so the bearer token decides."""
    if "authorization" in request.headers:
        return None
    tls = (request.scope.get("extensions") or {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or ()
    if not chain:
        return None
    return pki_services.authenticate_certificate(platform, chain[0], method=request.method, path=request.url.path)


Scope = Annotated[RequestScope, Depends(require_scope)]
PlatformDep = Annotated[Platform, Depends(get_platform)]
