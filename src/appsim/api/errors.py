"""Domain errors -> RFC 9457 problem details, in one place.

Body (``application/problem+json``)::

    {"type": "https://appsim.dev/problems/dimension-mismatch", "title": "Dimension mismatch",
     "status": 422, "detail": "...", "field": "vector", "request_id": "...", ...extra}

``type`` ends with the error's machine-readable code; ``field`` names the offending input (dotted path);
request validation errors also list every problem in ``errors`` ([{field, message, type}]).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from appsim.errors import AppsimError

PROBLEM_BASE = "https://appsim.dev/problems/"
log = structlog.get_logger("appsim.api")

#: JSON schema of an RFC 9457 problem-details body (what :func:`problem_response` writes), for OpenAPI.
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "field": {"type": "string"},
        "request_id": {"type": "string"},
    },
    "additionalProperties": True,
}


def problem_doc(description: str) -> dict[str, Any]:
    """An OpenAPI ``responses=`` entry for a problem-details answer (``application/problem+json`` with
    :data:`PROBLEM_SCHEMA`), e.g. ``responses={404: problem_doc("unknown experiment")}``."""
    return {"description": description, "content": {"application/problem+json": {"schema": PROBLEM_SCHEMA}}}


def problem_docs(descriptions: Mapping[int, str]) -> dict[int | str, dict[str, Any]]:
    """:func:`problem_doc` for each ``{status: description}``: a whole ``responses=`` argument."""
    return {status: problem_doc(text) for status, text in descriptions.items()}


def _json_safe(v: Any) -> Any:
    """Make extras JSON-safe (no NaN/inf: replaced by None)."""
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        return None
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_json_safe(x) for x in v]
    if isinstance(v, str | int | float | bool) or v is None:
        return v
    return str(v)


def problem_response(
    status: int,
    code: str,
    detail: str,
    *,
    request_id: str | None = None,
    field: str | None = None,
    title: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + code,
        "title": title or code.replace("-", " ").capitalize(),
        "status": status,
        "detail": detail,
    }
    if field is not None:
        body["field"] = field
    if request_id:
        body["request_id"] = request_id
    body.update(_json_safe(extra))
    h = {"X-Request-ID": request_id} if request_id else {}
    h.update(headers or {})
    return Response(orjson.dumps(body), status_code=status, media_type="application/problem+json", headers=h)


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def _loc_to_field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or "body"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppsimError)
    async def _domain(request: Request, exc: AppsimError) -> Response:
        request.state.error_kind = exc.code
        extra = {k: v for k, v in exc.extra.items() if k not in ("path",)}
        return problem_response(
            exc.status, exc.code, exc.detail, request_id=_request_id(request), field=exc.field, **extra
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        request.state.error_kind = "validation-error"
        errors = [
            {
                "field": _loc_to_field(tuple(e.get("loc", ()))),
                "message": e.get("msg", ""),
                "type": e.get("type"),
            }
            for e in exc.errors()
        ]
        first = errors[0] if errors else {"field": "body", "message": "invalid request"}
        return problem_response(
            422,
            "validation-error",
            f"{first['field']}: {first['message']}",
            request_id=_request_id(request),
            field=first["field"],
            errors=errors,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not-found", 405: "method-not-allowed", 413: "payload-too-large"}.get(
            exc.status_code, "http-error"
        )
        request.state.error_kind = code
        return problem_response(exc.status_code, code, str(exc.detail), request_id=_request_id(request))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        request.state.error_kind = "internal"
        log.exception("unhandled error", error_type=type(exc).__name__)
        return problem_response(
            500,
            "internal",
            "internal error; quote the request id when reporting it",
            request_id=_request_id(request),
        )
