"""Pure ASGI middleware: request id, body-size limit, strict JSON, timing, one log line and metrics per
request.

- ``X-Request-ID``: an incoming id (``[A-Za-z0-9._:-]{1,128}``) is kept, otherwise a new uuid4 hex; it is
  bound to structlog's contextvars and echoed in the response header.
- Bodies over ``max_body_bytes`` -> 413 problem (by Content-Length before reading, or while streaming).
- JSON bodies are parsed once with orjson (strict RFC 8259: ``NaN``/``Infinity`` tokens are rejected -> 422).
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import orjson
import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from appsim.api.errors import problem_response
from appsim.observability import ERRORS, LATENCY, REQUESTS

_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
log = structlog.get_logger("appsim.access")


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, known_routes: set[str] | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.known_routes = known_routes or set()

    def _route_label(self, scope: Scope) -> str:
        route = scope.get("route")
        path = getattr(route, "path", None)
        if path:
            return str(path)
        p = str(scope.get("path", ""))
        return p if p in self.known_routes else "other"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        incoming = headers.get("x-request-id", "")
        request_id = incoming if _ID_RE.match(incoming) else uuid.uuid4().hex
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        status_holder = {"status": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                hdrs = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                hdrs.append((b"x-request-id", request_id.encode()))
                message["headers"] = hdrs
            await send(message)

        try:
            early = await self._read_body(scope, receive, headers, request_id)
            if isinstance(early, tuple):
                status, code, detail = early
                state["error_kind"] = code
                resp = problem_response(status, code, detail, request_id=request_id, field="body")
                await resp(scope, receive, send_wrapper)
            else:
                body = early
                sent = False

                async def replay() -> Message:
                    nonlocal sent
                    if not sent:
                        sent = True
                        return {"type": "http.request", "body": body, "more_body": False}
                    return await receive()

                await self.app(scope, replay if body is not None else receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - t0
            route = self._route_label(scope)
            status = status_holder["status"]
            mv = str(state.get("model_version") or "none")
            REQUESTS.labels(route, scope.get("method", ""), str(status), mv).inc()
            LATENCY.labels(route, mv).observe(elapsed)
            if status >= 400:
                ERRORS.labels(route, mv, str(state.get("error_kind") or status)).inc()
            log.info(
                "request",
                method=scope.get("method"),
                route=route,
                status=status,
                model_version=state.get("model_version"),
                experiment_variant=state.get("variant"),
                latency_ms=round(elapsed * 1000.0, 3),
                error=state.get("error_kind"),
            )
            structlog.contextvars.clear_contextvars()

    async def _read_body(
        self, scope: Scope, receive: Receive, headers: dict[str, str], request_id: str
    ) -> bytes | tuple[int, str, str] | None:
        """Read and check the body of POST/PUT/PATCH. Returns the bytes, None (no body expected), or a
        ``(status, code, detail)`` to answer with at once."""
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            return None
        limit = self.max_body_bytes
        cl = headers.get("content-length")
        if cl is not None:
            try:
                if int(cl) > limit:
                    return 413, "payload-too-large", f"request body exceeds {limit} bytes"
            except ValueError:
                return 400, "bad-request", "invalid Content-Length"
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return 413, "payload-too-large", f"request body exceeds {limit} bytes"
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        ctype = headers.get("content-type", "")
        if body and ctype and "json" not in ctype.lower():
            return 415, "unsupported-media-type", f"send the body as application/json, not {ctype[:100]!r}"
        if body and ("json" in ctype or not ctype):
            try:
                orjson.loads(body)
            except orjson.JSONDecodeError as e:
                return (
                    422,
                    "invalid-json",
                    f"request body is not valid strict JSON (RFC 8259): {e}",
                )
        return body
