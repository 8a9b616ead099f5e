"""Settings: pydantic-settings over ``config.yaml`` (defaults) and ``APPSIM_*`` environment variables.

Priority: explicit keyword arguments > environment (``APPSIM_KEY``, nested ``APPSIM_A__B``) > the YAML file
(``APPSIM_CONFIG`` or the packaged ``config.yaml``) > field defaults. A bad value stops start-up with a
pydantic error naming the key (``appsim.config.settings.load_settings`` turns it into ``ConfigError``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

DEFAULT_CONFIG = Path(__file__).with_name("config.yaml")


class ConfigError(Exception):
    """Start-up configuration is invalid; the message names every bad key."""


class IndexConfig(BaseModel):
    backend: Literal["exact", "hnsw", "auto"] = "exact"
    auto_threshold: int = Field(200_000, ge=1)
    hnsw_m: int = Field(32, ge=4, le=128)
    hnsw_ef_construction: int = Field(200, ge=8)
    hnsw_ef_search: int = Field(128, ge=8)


class ModelVersionConfig(BaseModel):
    path: str
    index: IndexConfig = IndexConfig()


class SearchConfig(BaseModel):
    default_top_k: int = Field(10, ge=1)
    max_top_k: int = Field(100, ge=1, le=10_000)
    cache_size: int = Field(4096, ge=0)

    @model_validator(mode="after")
    def _default_within_max(self) -> SearchConfig:
        if self.default_top_k > self.max_top_k:
            raise ValueError("default_top_k must not exceed max_top_k")
        return self


class LimitsConfig(BaseModel):
    max_body_bytes: int = Field(1_048_576, ge=1024)
    max_name_chars: int = Field(200, ge=1)
    max_description_chars: int = Field(4000, ge=1)
    max_batch: int = Field(256, ge=1)


class ThreadsConfig(BaseModel):
    blas: int = Field(1, ge=1, le=64)
    search_workers: int = Field(4, ge=1, le=64)


class LoggingConfig(BaseModel):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_logs: bool = Field(True, alias="json")

    model_config = {"populate_by_name": True}


class EventStoreConfig(BaseModel):
    url: str = "sqlite:///var/events.sqlite"
    buffer_size: int = Field(10_000, ge=0)


class PredictionSettings(BaseModel):
    neighbours: int = Field(15, ge=1)
    min_neighbours: int = Field(10, ge=1)
    max_neighbours: int = Field(20, ge=1)
    history_file: str = "history_simulated.csv"

    @model_validator(mode="after")
    def _default_within_bounds(self) -> PredictionSettings:
        if not self.min_neighbours <= self.neighbours <= self.max_neighbours:
            raise ValueError(
                f"neighbours ({self.neighbours}) must lie within min_neighbours..max_neighbours "
                f"({self.min_neighbours}..{self.max_neighbours})"
            )
        return self


class DriftConfig(BaseModel):
    """Input-drift monitoring (``appsim.services.drift``): window sizes and alert thresholds.

    PSI (categorical): ``psi_threshold`` 0.25 = "significant shift" (0.1 = "moderate"; Siddiqi 2006);
    empty bins get half an observation, at least ``psi_epsilon``. KS (numeric): ``D > ks_threshold``.
    Wasserstein (numeric): distance / reference standard deviation > ``wasserstein_threshold``. Each also
    needs significance ``p < alpha`` (chi-square for PSI, KS for both numeric methods).
    """

    model_config = {"extra": "forbid"}

    enabled: bool = True
    window_size: int = Field(default=500, ge=10, le=1_000_000)
    min_samples: int = Field(default=100, ge=10)
    update_every: int = Field(default=100, ge=1)
    nn_reference_sample: int = Field(default=1000, ge=10, le=100_000)
    reference_sample: int = Field(default=20_000, ge=100)
    projection_components: int = Field(default=3, ge=1, le=16)
    psi_threshold: float = Field(default=0.25, gt=0)
    psi_epsilon: float = Field(default=1e-4, gt=0, lt=0.01)
    ks_threshold: float = Field(default=0.1, gt=0, le=1)
    wasserstein_threshold: float = Field(default=0.2, gt=0)
    alpha: float = Field(default=0.01, gt=0, lt=1)
    seed: int = 20261129

    @model_validator(mode="after")
    def _min_within_window(self) -> DriftConfig:
        if self.min_samples > self.window_size:
            raise ValueError("min_samples must not exceed window_size")
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="APPSIM_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    env: str = "dev"
    catalogue_dir: Path = Path("artifacts/real")
    default_model_version: str = "v2"
    model_versions: dict[str, ModelVersionConfig] = Field(
        default_factory=lambda: {"v1": ModelVersionConfig(path="v1"), "v2": ModelVersionConfig(path="v2")}
    )
    search: SearchConfig = SearchConfig()
    limits: LimitsConfig = LimitsConfig()
    threads: ThreadsConfig = ThreadsConfig()
    logging: LoggingConfig = LoggingConfig()
    event_store: EventStoreConfig = EventStoreConfig()
    admin_api_key: SecretStr | None = None
    prediction: PredictionSettings = PredictionSettings()
    experiments: list[dict[str, Any]] = Field(default_factory=list)
    drift: DriftConfig = DriftConfig()

    @field_validator("model_versions")
    @classmethod
    def _non_empty(cls, v: dict[str, ModelVersionConfig]) -> dict[str, ModelVersionConfig]:
        if not v:
            raise ValueError("at least one model version must be configured")
        return v

    @model_validator(mode="after")
    def _default_is_configured(self) -> Settings:
        if self.default_model_version not in self.model_versions:
            raise ValueError(
                f"default_model_version {self.default_model_version!r} is not one of the configured "
                f"model_versions {sorted(self.model_versions)}"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_file = Path(os.environ.get("APPSIM_CONFIG", DEFAULT_CONFIG))
        return (
            init_settings,
            env_settings,
            YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file, yaml_file_encoding="utf-8"),
        )


def load_settings(**overrides: Any) -> Settings:
    """Build and validate settings; raises ConfigError naming each bad key (``a.b: message``)."""
    cfg = os.environ.get("APPSIM_CONFIG")
    if cfg and not Path(cfg).is_file():
        raise ConfigError(f"APPSIM_CONFIG: file {cfg!r} does not exist")
    try:
        return Settings(**overrides)
    except ValidationError as e:
        lines = [
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']} (got {err.get('input')!r})"
            for err in e.errors()
        ]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
