"""Typed dependencies at the boundary (``ContainerDep``) and request -> domain conversions."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from appsim.api.schemas import AppIn, FiltersIn, QueryIn, RoutingIn
from appsim.app import Container
from appsim.domain import AppMetadata
from appsim.errors import UnknownModelVersionError
from appsim.services.similarity import Filters, Query


async def get_container(request: Request) -> Container:
    """Async so that FastAPI runs it on the event loop, not in a thread-pool round trip."""
    return request.app.state.container


ContainerDep = Annotated[Container, Depends(get_container)]


async def request_id(request: Request) -> str:
    return str(request.state.request_id)


RequestIdDep = Annotated[str, Depends(request_id)]


def to_app(a: AppIn) -> AppMetadata:
    return AppMetadata(name=a.name, category=a.category, platform=a.platform, description=a.description)


def to_query(q: QueryIn) -> Query:
    return Query(app_id=q.app_id, vector=q.vector, app=to_app(q.app) if q.app is not None else None)


def to_filters(f: FiltersIn | None) -> Filters | None:
    if f is None:
        return None
    cat = f.category if isinstance(f.category, list) else None
    plat = f.platform if isinstance(f.platform, list) else None
    return Filters(category=tuple(cat) if cat else None, platform=tuple(plat) if plat else None)


def choose_version(
    container: Container, routing: RoutingIn, request_id: str
) -> tuple[str, dict[str, Any] | None]:
    """The model version serving this request, and the experiment assignment (or None).

    An explicit ``model_version`` wins (validated against the configured set; not an exposure). Otherwise
    the A/B controller assigns by the randomisation unit; without an enabled experiment, the configured
    default version serves.
    """
    sim = container.require_similarity()
    known = sorted(sim.versions)
    if routing.model_version is not None:
        if routing.model_version not in known:
            raise UnknownModelVersionError(routing.model_version, known)
        return routing.model_version, None
    ab = container.extras.get("ab")
    if ab is not None:
        assignment = ab.assign_request(routing, request_id)
        if assignment is not None:
            return assignment["model_version"], assignment
    return container.settings.default_model_version, None
