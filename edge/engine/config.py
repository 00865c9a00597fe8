"""How an engine is sized (EngineConfig), the llama context that makes, and which requests fit it."""

from __future__ import annotations

import os
from dataclasses import dataclass

import llama_cpp

from edge.engine.jobs import GenerationRequest, RequestInvalid
from edge.engine.speculative import SpeculativeConfig

_CACHE_TYPES = {"f16": llama_cpp.GGML_TYPE_F16, "q8_0": llama_cpp.GGML_TYPE_Q8_0, "q4_0": llama_cpp.GGML_TYPE_Q4_0}
_FLASH_ATTN = {"auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO, "on": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
               "off": llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED}


@dataclass(frozen=True)
class EngineConfig:
    """How the context is sized: `ctx_size` tokens per request, `parallel` sequences at once;
    up to `max_queue` requests wait for a slot, each at most `queue_timeout` seconds (None: no limit)."""

    ctx_size: int
    parallel: int = 2
    n_batch: int = 512
    threads: int | None = None
    max_queue: int = 64
    queue_timeout: float | None = 600.0
    cache_type_k: str = "f16"  # f16, q8_0 or q4_0 (a quantized V cache needs flash attention)
    cache_type_v: str = "f16"
    flash_attn: str = "auto"  # auto, on or off
    speculative: SpeculativeConfig = SpeculativeConfig()

    def __post_init__(self) -> None:
        if self.ctx_size < 16:
            raise ValueError(f"context size must be at least 16 tokens, got {self.ctx_size}")
        if self.parallel < 1:
            raise ValueError(f"parallel must be at least 1, got {self.parallel}")
        if self.max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {self.max_queue}")
        if self.parallel > self.n_batch:
            # Every step puts one token of each running sequence into the batch.
            raise ValueError(f"parallel ({self.parallel}) must not exceed the batch size ({self.n_batch})")


def check_fits(request: GenerationRequest, config: EngineConfig) -> None:
    """Raise RequestInvalid when `request` could never run on an engine configured as `config`."""
    if not request.prompt_tokens:
        raise RequestInvalid("the prompt is empty")
    if request.n > config.parallel:
        raise RequestInvalid(f"n={request.n} needs the server started with --parallel {request.n} or more")
    if request.kv_cells() > config.ctx_size:
        raise RequestInvalid(f"the request needs {request.kv_cells()} KV cells; a sequence has {config.ctx_size}")


def context_params(config: EngineConfig) -> llama_cpp.llama_context_params:
    """The llama context for `config`: `parallel` sequences of `ctx_size` cells each."""
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = config.ctx_size * config.parallel
    params.n_batch = params.n_ubatch = config.n_batch
    params.n_seq_max = config.parallel
    params.kv_unified = False  # a stream per sequence: batched output equals solo output
    params.n_threads = params.n_threads_batch = config.threads or os.cpu_count() or 1
    params.no_perf = True
    params.type_k, params.type_v = _CACHE_TYPES[config.cache_type_k], _CACHE_TYPES[config.cache_type_v]
    params.flash_attn_type = _FLASH_ATTN[config.flash_attn]
    return params
