"""Server settings: CLI flags override EDGE_* environment variables, which override defaults."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from edge.cards import DEFAULT_MODELS_DIR

# Default per-request context when the flag is not given: the model's own, capped, because the
# KV cache grows with it (WizardLM-2's 64k context is 14 GiB per sequence at f16).
DEFAULT_CTX_CAP = 8192


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDGE_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    model: str | None = None
    models_dir: Path = DEFAULT_MODELS_DIR
    ctx_size: int | None = Field(None, ge=16)
    threads: int | None = Field(None, ge=1)
    n_gpu_layers: int = Field(0, ge=-1)
    parallel: int = Field(2, ge=1, le=64)
    max_queue: int = Field(64, ge=0)  # requests waiting for a slot beyond which new ones get a 429
    queue_timeout: float = Field(600.0, ge=0)  # seconds a request may wait for a slot; 0: no limit
    shutdown_timeout: float = Field(30.0, ge=0)  # seconds running requests get to finish on SIGTERM
    api_keys: str = ""  # comma-separated; empty means no authentication
    price: float | None = Field(None, ge=0)  # USD per million tokens; overrides the card's
    log_level: str = "info"

    @property
    def api_key_list(self) -> list[str]:
        return [key.strip() for key in self.api_keys.split(",") if key.strip()]
