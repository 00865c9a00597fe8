"""Turn serve settings into llama.cpp load options, resolving `--n-gpu-layers auto` with the plan."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from edge.engine import backends
from edge.engine.llama_model import LoadOptions
from edge.plan.gguf_info import EXPERT_PATTERN, GGUFInfoError, read_layout, weight_types
from edge.plan.cpu_kernels import KernelChoice, choose
from edge.plan.fit import Workload, auto_gpu_layers
from edge.settings import Settings

log = logging.getLogger("edge")


def _free_gpu_bytes() -> float:
    """Free memory of the first GPU device this build sees, 0 when there is none."""
    backends.ensure_backends()
    gpus = [device for device in backends.devices() if device.type in ("GPU", "IGPU")]
    return float(gpus[0].free_bytes) if gpus else 0.0


def resolve_gpu_layers(settings: Settings, path: Path, kv_cells: int) -> int:
    if settings.n_gpu_layers != "auto":
        return int(settings.n_gpu_layers)
    vram = settings.vram * 1e9 if settings.vram is not None else _free_gpu_bytes()
    if not vram:
        log.info("--n-gpu-layers auto: no GPU device in this build, so 0 layers")
        return 0
    try:
        layout = read_layout(path)
    except GGUFInfoError as error:
        raise ValueError(f"--n-gpu-layers auto cannot read {path}: {error}") from error
    workload = Workload(kv_cells, settings.cache_type, settings.flash_attn != "off")
    layers = auto_gpu_layers(layout, vram, workload, cpu_moe=settings.cpu_moe)
    log.info("--n-gpu-layers auto: %d of %d layers fit in %.1f GB", layers, layout.hparams.n_layer + 1, vram / 1e9)
    return layers


def cpu_kernels(settings: Settings, path: Path) -> KernelChoice:
    """--cpu-kernels resolved for the model at `path`: by probe (or its cache) unless plain."""
    requested = settings.cpu_kernels_requested
    try:
        model = weight_types(path)
    except GGUFInfoError as error:
        raise ValueError(f"cannot read {path} to choose CPU kernels: {error}") from error
    return choose(requested, model, settings.threads or os.cpu_count() or 1, settings.cache_dir)


def load_options(settings: Settings, path: Path, kv_cells: int, kernels: str) -> LoadOptions:
    rules = list(settings.override_rules)
    if settings.n_cpu_moe and not settings.cpu_moe:
        # Experts of blocks 0..N-1 only, like llama.cpp's --n-cpu-moe.
        blocks = "|".join(str(i) for i in range(settings.n_cpu_moe))
        rules.append((rf"^blk\.({blocks}){EXPERT_PATTERN}", "CPU"))
    split = settings.tensor_split_values
    return LoadOptions(
        n_gpu_layers=resolve_gpu_layers(settings, path, kv_cells), cpu_moe=settings.cpu_moe,
        overrides=tuple(rules), load_mode=settings.load_mode, split_mode=settings.split_mode,
        main_gpu=settings.main_gpu, tensor_split=split, cpu_kernels=kernels,
    )
