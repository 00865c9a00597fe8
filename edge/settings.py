"""Server settings: CLI flags override EDGE_* environment variables, which override defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from edge.cards import DEFAULT_MODELS_DIR
from edge.engine.backends import parse_override
from edge.engine.speculative import DRAFT_MAX_RANGE, DRAFT_POLICIES, SPECULATIVE_MODES, SpeculativeConfig
from edge.plan.cpu_kernels import default_cache_dir, validate_choice

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
    n_gpu_layers: int | Literal["auto"] = 0  # -1 all; "auto": as many as `edge plan` fits in --vram
    vram: float | None = Field(None, ge=0)  # GB for "auto"; default: what the first GPU reports free
    cpu_moe: bool = False  # MoE expert tensors stay in host memory
    n_cpu_moe: int = Field(0, ge=0)  # only the experts of the first N blocks stay in host memory
    override_tensor: str = ""  # PATTERN=DEVICE[,PATTERN=DEVICE...]
    cache_type: Literal["f16", "q8_0", "q4_0"] = "f16"
    flash_attn: Literal["auto", "on", "off"] = "auto"
    load_mode: Literal["auto", "mmap", "mlock", "read"] = "auto"
    cpu_kernels: str = "auto"  # auto (probe), amx, repack or plain: edge/plan/cpu_kernels.py
    no_repack: bool = False  # the same as cpu_kernels "plain" (llama.cpp's --no-repack)
    cache_dir: Path = Field(default_factory=default_cache_dir)  # the CPU kernel probe's verdicts
    split_mode: Literal["none", "layer", "row"] = "layer"
    main_gpu: int = Field(0, ge=0)
    tensor_split: str = ""  # e.g. "3,1": share of the model per GPU
    parallel: int = Field(2, ge=1, le=64)
    speculative: Literal[SPECULATIVE_MODES] | None = None  # None: draft if a draft model is given, else off
    draft_max: int = Field(SpeculativeConfig.draft_max, ge=DRAFT_MAX_RANGE[0], le=DRAFT_MAX_RANGE[1])
    draft_model: Path | None = None
    draft_policy: Literal[DRAFT_POLICIES] = SpeculativeConfig.policy
    max_queue: int = Field(64, ge=0)  # requests waiting for a slot beyond which new ones get a 429
    queue_timeout: float = Field(600.0, ge=0)  # seconds a request may wait for a slot; 0: no limit
    shutdown_timeout: float = Field(30.0, ge=0)  # seconds running requests get to finish on SIGTERM
    api_keys: str = ""  # comma-separated; empty means no authentication
    price: float | None = Field(None, ge=0)  # USD per million tokens; overrides the card's
    log_level: str = "info"
    rpc: str = ""  # comma-separated host:port of `edge worker`s; empty means this machine only

    @property
    def rpc_endpoints(self) -> list[str]:
        from edge.rpc import parse_endpoints

        return parse_endpoints(self.rpc) if self.rpc.strip() else []

    @field_validator("n_gpu_layers")
    @classmethod
    def _layers(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < -1:
            raise ValueError("must be -1 (all), 0 or more, or auto")
        return value

    @field_validator("cpu_kernels")
    @classmethod
    def _kernels(cls, value: str) -> str:
        return validate_choice(value)

    @property
    def cpu_kernels_requested(self) -> str:
        """--cpu-kernels, with --no-repack meaning plain."""
        if not self.no_repack:
            return self.cpu_kernels
        if self.cpu_kernels not in ("auto", "plain"):
            raise ValueError(f"--no-repack means --cpu-kernels plain; it contradicts --cpu-kernels {self.cpu_kernels}")
        return "plain"

    @property
    def speculative_config(self) -> SpeculativeConfig:
        """--speculative and its companions; a draft model alone means --speculative draft."""
        mode = self.speculative or ("draft" if self.draft_model else SpeculativeConfig.mode)
        return SpeculativeConfig(mode, self.draft_max, self.draft_model, self.draft_policy)

    @property
    def override_rules(self) -> list[tuple[str, str]]:
        return [parse_override(spec.strip()) for spec in self.override_tensor.split(",") if spec.strip()]

    @property
    def tensor_split_values(self) -> tuple[float, ...]:
        try:
            return tuple(float(part) for part in self.tensor_split.split(",") if part.strip())
        except ValueError:
            raise ValueError(f"--tensor-split expects comma-separated numbers, got {self.tensor_split!r}") from None

    @property
    def api_key_list(self) -> list[str]:
        return [key.strip() for key in self.api_keys.split(",") if key.strip()]
