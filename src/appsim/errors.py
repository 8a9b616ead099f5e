"""Domain errors. Services raise these; only ``appsim.api.errors`` turns them into HTTP.

Hierarchy::

    AppsimError
    ├── ValidationError            bad input from a caller            -> 422
    │   ├── DimensionMismatchError vector of the wrong dimension
    │   ├── InvalidVectorError     NaN / inf / zero vector
    │   └── UnknownModelVersionError
    ├── NotFoundError              unknown app id, request id, experiment -> 404
    ├── ConflictError              state does not allow the operation -> 409
    ├── AuthError                  missing / wrong admin API key      -> 401
    ├── UnavailableError           not ready yet (loading)            -> 503
    └── DataError                  a catalogue file / artifact failed a check (start-up, build)
        ├── UnsafePickleError      a pickle asked for a non-allow-listed global
        └── ArtifactError          missing / corrupted artifact
"""

from __future__ import annotations

from typing import Any


class AppsimError(Exception):
    """Base of all appsim errors. ``field`` names the offending input field, if any."""

    status: int = 500
    code: str = "internal"

    def __init__(self, detail: str, *, field: str | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field
        self.extra = extra


class ValidationError(AppsimError):
    status = 422
    code = "validation-error"


class DimensionMismatchError(ValidationError):
    code = "dimension-mismatch"

    def __init__(
        self, expected: int, received: int, *, field: str = "vector", model_version: str = ""
    ) -> None:
        super().__init__(
            f"vector has dimension {received}, model version {model_version!r} expects {expected}",
            field=field,
            expected_dimension=expected,
            received_dimension=received,
        )


class InvalidVectorError(ValidationError):
    code = "invalid-vector"


class UnknownModelVersionError(ValidationError):
    code = "unknown-model-version"

    def __init__(self, version: str, known: list[str], *, field: str = "model_version") -> None:
        super().__init__(
            f"unknown model version {version!r}; known versions: {', '.join(known)}",
            field=field,
            known_versions=known,
        )


class NotFoundError(AppsimError):
    status = 404
    code = "not-found"


class ConflictError(AppsimError):
    status = 409
    code = "conflict"


class AuthError(AppsimError):
    status = 401
    code = "unauthorized"


class UnavailableError(AppsimError):
    status = 503
    code = "unavailable"


class DataError(AppsimError):
    """A data file or artifact failed a check. ``path`` names the file, ``check`` the failed check."""

    code = "data-error"

    def __init__(
        self, detail: str, *, path: str | None = None, check: str | None = None, **extra: Any
    ) -> None:
        super().__init__(detail, path=path, check=check, **extra)
        self.path = path
        self.check = check


class UnsafePickleError(DataError):
    code = "unsafe-pickle"


class ArtifactError(DataError):
    code = "artifact-error"
