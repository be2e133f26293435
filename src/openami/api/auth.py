"""Bearer-token authentication: produces the frozen RequestScope every service function takes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from openami.errors import Unauthenticated
from openami.services.context import Platform, RequestScope, authenticate_token

_bearer = HTTPBearer(auto_error=False, description="API token (printed once when the platform first starts)")


def get_platform(request: Request) -> Platform:
    platform: Platform = request.app.state.platform
    return platform


def require_scope(
    platform: Annotated[Platform, Depends(get_platform)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> RequestScope:
    """Fail closed: no token, an unknown one or an expired one is a 401 problem."""
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise Unauthenticated("a bearer token is required")
    return authenticate_token(platform, credentials.credentials)


Scope = Annotated[RequestScope, Depends(require_scope)]
PlatformDep = Annotated[Platform, Depends(get_platform)]
