"""RFC 9457 problem details: the one place that turns errors into HTTP responses."""

from __future__ import annotations

import uuid
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from openami.errors import OpenAmiError

PROBLEM_JSON = "application/problem+json"
_log = structlog.get_logger("openami.api")


def problem(
    status: int, title: str, *, detail: str | None = None, type_: str = "about:blank", **extra: Any
) -> JSONResponse:
    body: dict[str, Any] = {"type": type_, "title": title, "status": status}
    if detail is not None:
        body["detail"] = detail
    body.update(extra)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


async def _openami_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, OpenAmiError)
    return problem(
        exc.http_status,
        exc.code.replace("-", " ").capitalize(),
        detail=exc.message,
        type_=f"https://openami.dev/problems/{exc.code}",
        instance=str(request.url.path),
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": [str(p) for p in err.get("loc", ())], "msg": str(err.get("msg", "")), "type": str(err.get("type", ""))}
        for err in exc.errors()
    ]
    return problem(
        422,
        "Invalid request",
        detail="The request does not match the API's schema.",
        type_="https://openami.dev/problems/invalid-input",
        instance=str(request.url.path),
        errors=errors,
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return problem(exc.status_code, str(exc.detail), instance=str(request.url.path))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    request_id = uuid.uuid4().hex
    _log.error("api.unexpected_error", request_id=request_id, path=request.url.path, error_type=type(exc).__name__)
    return problem(500, "Internal error", detail=f"request id {request_id}", instance=str(request.url.path))


def install(app: FastAPI) -> None:
    app.add_exception_handler(OpenAmiError, _openami_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
