"""Admin routes: ``POST /admin/reload/{model_version}`` hot-reloads one model version's artifacts.

Every route here requires the admin key (``appsim.api.security.require_admin``: 401 / 503 problems).

A reload, in order (``reload_model_version``):

1. the service must be ready (503 otherwise) and the version configured (422 ``unknown-model-version``);
   one reload at a time per process (a concurrent one -> 409 ``conflict``, nothing changes);
2. the version is loaded FRESH from disk with ``appsim.app.load_version`` and every start-up check
   (files exist, manifest JSON, sha256 of vectors/ids against the manifest, dtype, shape, finite,
   L2-normalised rows, ids present in ``apps.csv``, encoder files), then two smoke checks on the NEW
   object before it can serve: a top-1 search by the first catalogue id answers one finite score
   (``smoke-index``), and the encoder (if any) places a probe app as a finite ``(dim,)`` vector
   (``smoke-encoder``). Any failure -> 409 ``conflict`` problem with ``model_version``, ``file`` (the
   offending file, relative to ``catalogue_dir``) and ``check``; the OLD version keeps serving untouched;
3. the new version is swapped in atomically (``SimilarityService.replace_version``: one dict assignment;
   requests in flight finish on the object they started with), the similarity cache entries of that version
   are dropped (``container.extras["cache"].clear(version)``; keys also carry the manifest's
   ``vectors_sha256``), ``appsim_models_loaded{model_version}`` is set to the new row count, and the
   ``container.extras["on_reloaded"]`` hooks run as ``hook(container, version)`` (a failing hook is logged,
   never undoes the swap);
4. the answer gives the new manifest's ``vectors_sha256`` / ``ids_sha256`` / ``count`` / ``dim``, the
   previous ones, ``changed`` (sha differs), ``load_seconds`` (wall time of step 2) and ``worker_pid``.

Multi-worker: a reload reaches the ONE worker process that answered it; see docs/reliability-results.md.
Loading runs in FastAPI's thread pool (plain ``def`` route), with BLAS threads bounded as at start-up.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import structlog
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field
from threadpoolctl import threadpool_limits

from appsim.api.deps import ContainerDep
from appsim.api.security import require_admin
from appsim.domain import AppMetadata
from appsim.errors import AppsimError, ConflictError, DataError, UnknownModelVersionError
from appsim.observability import MODELS_LOADED
from appsim.services.similarity import ModelVersion, Query, SimilarityService

log = structlog.get_logger("appsim.admin")

_PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}

router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    dependencies=[Depends(require_admin)],
    responses={
        401: {"description": "missing or wrong X-API-Key", **_PROBLEM},
        503: {"description": "no admin key configured, or the service is not ready", **_PROBLEM},
    },
)

_RELOAD_LOCK_KEY = "reload_lock"


class ArtifactOut(BaseModel):
    vectors_sha256: str | None = Field(description="sha256 of vectors.npy, from the manifest")
    ids_sha256: str | None = Field(description="sha256 of ids.npy, from the manifest")
    count: int = Field(description="catalogue rows")
    dim: int = Field(description="embedding dimension")
    created_at: str | None = Field(None, description="the manifest's build time (ISO 8601)")


class ReloadResponse(BaseModel):
    model_version: str
    changed: bool = Field(description="the new vectors_sha256 differs from the one served before")
    manifest: ArtifactOut = Field(description="the artifact now serving")
    previous: ArtifactOut = Field(description="the artifact served before the reload")
    index: str = Field(description="index backend of the new version")
    encoder: str | None = Field(description="cold-start encoder kind of the new version")
    load_seconds: float = Field(description="wall time to load and check the artifact from disk (s)")
    cache_entries_dropped: int = Field(description="similarity-cache entries of this version dropped")
    worker_pid: int = Field(description="the worker process that reloaded (one worker per call)")


def _artifact_out(mv: ModelVersion) -> ArtifactOut:
    m = mv.manifest
    return ArtifactOut(
        vectors_sha256=m.get("vectors_sha256"), ids_sha256=m.get("ids_sha256"), count=mv.size, dim=mv.dim,
        created_at=m.get("created_at"),
    )


def _relative(path: str | None, root: Path) -> str | None:
    """``path`` relative to the catalogue directory when inside it (no server paths in answers)."""
    if not path:
        return None
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return Path(path).name


def _rejected(version: str, root: Path, detail: str, *, file: str | None, check: str,
              serving: ModelVersion) -> ConflictError:
    for prefix in {str(root.resolve()), str(root)}:  # no absolute server paths in the answer
        detail = detail.replace(prefix.rstrip("/") + "/", "")
    return ConflictError(
        f"reload of model version {version!r} rejected ({check}): {detail}; "
        f"the previous artifact (vectors_sha256 {str(serving.manifest.get('vectors_sha256'))[:12]}...) "
        "keeps serving",
        model_version=version, file=_relative(file, root), check=check,
        serving_vectors_sha256=serving.manifest.get("vectors_sha256"),
    )


def smoke_check(mv: ModelVersion) -> tuple[str, str] | None:
    """Exercise a freshly loaded version before it serves: ``(check, detail)`` of the first failure, or None.

    ``smoke-index``: a top-1 search by the first catalogue id returns one neighbour with a finite score.
    ``smoke-encoder``: the encoder (if any) turns a probe app into a finite ``(dim,)`` vector."""
    if mv.size == 0:
        return "smoke-index", "the artifact has no rows"
    try:
        probe_query = Query(app_id=str(mv.ids[0])) if mv.size > 1 else Query(vector=np.asarray(mv.vectors[0]))
        probe = SimilarityService({mv.name: mv}, default_top_k=1, max_top_k=1)
        res = probe.find_similar(mv.name, probe_query, 1)
    except Exception as e:  # any failure rejects the artifact
        return "smoke-index", f"probe search failed: {type(e).__name__}: {e}"
    if len(res.neighbours) != 1 or not np.isfinite(res.neighbours[0].score):
        return "smoke-index", f"probe search returned {len(res.neighbours)} neighbours / a non-finite score"
    if mv.encoder is not None:
        category = str(mv.categories[0]) if mv.size else None
        app = AppMetadata(name="reload probe", category=category, platform=str(mv.platforms[0]),
                            description="A probe app used to check the encoder after a reload.")
        try:
            vec = np.asarray(mv.encoder.encode([app]), dtype=np.float64)
        except Exception as e:  # any failure rejects the artifact
            return "smoke-encoder", f"probe encoding failed: {type(e).__name__}: {e}"
        if vec.shape != (1, mv.dim) or not np.isfinite(vec).all():
            return "smoke-encoder", f"encoder returned shape {vec.shape} (expected (1, {mv.dim})) or NaN/inf"
    return None


def reload_model_version(container: Any, version: str) -> ReloadResponse:
    """Reload ``version`` from disk and swap it in (steps in the module docstring).

    raises UnavailableError (not ready), UnknownModelVersionError (not configured), ConflictError (a reload
    already running, or the artifact failed a check: the old version keeps serving)."""
    from appsim.app import load_version  # app imports the routers: import at call time

    sim = container.require_similarity()
    s = container.settings
    if version not in s.model_versions:
        raise UnknownModelVersionError(version, sorted(s.model_versions))
    with container.lock:
        lock: threading.Lock = container.extras.setdefault(_RELOAD_LOCK_KEY, threading.Lock())
    if not lock.acquire(blocking=False):
        raise ConflictError("another model-version reload is running in this worker; retry when it ends",
                            model_version=version, check="reload-in-progress")
    try:
        root = Path(s.catalogue_dir)
        version_dir = str(root / s.model_versions[version].path)
        old = sim.version(version)
        t0 = time.perf_counter()
        try:
            with threadpool_limits(limits=s.threads.blas):
                mv = load_version(s, version)
                failed = smoke_check(mv)
        except DataError as e:
            log.warning("model version reload rejected", model_version=version, check=e.check,
                        file=_relative(e.path, root))
            raise _rejected(version, root, e.detail, file=e.path, check=e.check or "load", serving=old) from e
        except AppsimError:
            raise
        except Exception as e:  # e.g. a damaged encoder file: reject
            log.warning("model version reload rejected", model_version=version, check="load",
                        error_type=type(e).__name__)
            raise _rejected(version, root, f"{type(e).__name__}: {e}", file=version_dir, check="load",
                            serving=old) from e
        if failed is not None:
            check, detail = failed
            log.warning("model version reload rejected", model_version=version, check=check)
            raise _rejected(version, root, detail, file=version_dir, check=check, serving=old)
        load_seconds = time.perf_counter() - t0
        sim.replace_version(mv)  # atomic: one dict assignment
        cache = container.extras.get("cache")
        dropped = int(cache.clear(version)) if cache is not None else 0
        MODELS_LOADED.labels(version).set(mv.size)
        for hook in container.extras.get("on_reloaded", []):
            try:
                hook(container, version)
            except Exception as e:  # a hook never undoes a good swap
                log.error("on_reloaded hook failed", model_version=version,
                          hook=getattr(hook, "__name__", "?"), error=f"{type(e).__name__}: {e}")
        out = ReloadResponse(
            model_version=version,
            changed=old.manifest.get("vectors_sha256") != mv.manifest.get("vectors_sha256"),
            manifest=_artifact_out(mv), previous=_artifact_out(old), index=mv.index.name,
            encoder=getattr(mv.encoder, "kind", None), load_seconds=round(load_seconds, 4),
            cache_entries_dropped=dropped, worker_pid=os.getpid(),
        )
        log.info("model version reloaded", model_version=version, changed=out.changed,
                 vectors_sha256=out.manifest.vectors_sha256, previous_sha256=out.previous.vectors_sha256,
                 count=out.manifest.count, dim=out.manifest.dim, seconds=out.load_seconds,
                 cache_entries_dropped=dropped)
        return out
    finally:
        lock.release()


@router.post(
    "/reload/{model_version}",
    response_model=ReloadResponse,
    summary="Reload a model version's artifacts from disk and swap them in atomically (admin)",
    responses={
        409: {"description": "an artifact failed a check (names file and check; the old version keeps "
                             "serving) or another reload is running", **_PROBLEM},
        422: {"description": "unknown model version", **_PROBLEM},
    },
)
def reload_version(model_version: str, request: Request, container: ContainerDep) -> ReloadResponse:
    if model_version in container.settings.model_versions:  # metrics label; never an arbitrary string
        request.state.model_version = model_version
    return reload_model_version(container, model_version)
