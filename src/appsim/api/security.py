"""Admin authentication: ONE reusable dependency, ``require_admin``, for every ``/admin/...`` route.

Usage (a whole router, or one route)::

    from appsim.api.security import AdminDep, require_admin

    router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)])
    # or: def route(..., _: AdminDep) -> ...

Rules:

* the caller sends the key in the ``X-API-Key`` header; it is compared with ``settings.admin_api_key``
  (a ``SecretStr``) in constant time (``hmac.compare_digest`` over the UTF-8 bytes);
* no key configured (None or empty) -> ``UnavailableError`` (503 problem): admin routes are disabled;
* header missing or wrong -> ``AuthError`` (401 problem, ``field`` = ``X-API-Key``);
* the key (configured or sent) is never logged, echoed or put in an error; a refusal logs one warning
  line with the reason (``missing`` / ``wrong``) and the route.

The header is declared with FastAPI's ``APIKeyHeader`` (``auto_error=False``), so the OpenAPI document shows
the ``X-API-Key`` security scheme on admin routes while the errors stay problem details raised here.
"""

from __future__ import annotations

import hmac
from typing import Annotated

import structlog
from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from appsim.errors import AuthError, UnavailableError

ADMIN_HEADER = "X-API-Key"
log = structlog.get_logger("appsim.security")

api_key_header = APIKeyHeader(
    name=ADMIN_HEADER,
    auto_error=False,
    scheme_name="AdminApiKey",
    description="the admin API key (settings.admin_api_key / APPSIM_ADMIN_API_KEY)",
)


def check_admin_key(configured: str | None, sent: str | None) -> None:
    """Raise unless ``sent`` equals ``configured``.

    raises UnavailableError (503) when ``configured`` is None or empty, AuthError (401) when ``sent`` is
    missing, empty or different (constant-time comparison)."""
    if not configured:
        raise UnavailableError(
            "admin endpoints are disabled: no admin API key is configured (set APPSIM_ADMIN_API_KEY)"
        )
    if not sent:
        raise AuthError(f"missing {ADMIN_HEADER} header", field=ADMIN_HEADER)
    if not hmac.compare_digest(sent.encode("utf-8"), configured.encode("utf-8")):
        raise AuthError(f"wrong {ADMIN_HEADER}", field=ADMIN_HEADER)


def require_admin(request: Request, api_key: Annotated[str | None, Security(api_key_header)] = None) -> None:
    """FastAPI dependency: the request carries the configured admin key (see ``check_admin_key``).

    Reads ``settings.admin_api_key`` from ``request.app.state.container`` at each call (no module state)."""
    secret = request.app.state.container.settings.admin_api_key
    configured = secret.get_secret_value() if secret is not None else None
    try:
        check_admin_key(configured, api_key)
    except (AuthError, UnavailableError) as e:
        route = getattr(request.scope.get("route"), "path", request.url.path)
        reason = "missing" if not api_key else "wrong"
        if isinstance(e, UnavailableError):
            reason = "not-configured"
        log.warning("admin request refused", route=route, reason=reason)
        raise


AdminDep = Annotated[None, Depends(require_admin)]
