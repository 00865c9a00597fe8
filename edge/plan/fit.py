"""Where a model's weights, KV cache and compute buffers go on a given machine, and how fast it can decode.

Placement follows llama.cpp's rules: `--n-gpu-layers k` puts the last k blocks (weights and their KV
cache) on the GPU, the output head goes too once every block does, and the input embeddings always
stay in host memory. With `--cpu-moe` every block is on the GPU except its expert tensors.
The speed bound is memory bandwidth only: per token, every dense weight, the active share of the
experts and the KV cache are read once; a real run is slower.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from edge.plan.gguf_info import ModelLayout
from edge.plan.memory import (
    LayerWeights, WeightSplit, active_bytes_per_token, compute_bytes, kv_bytes, kv_bytes_per_layer,
    output_bytes, runtime_bytes, split_weights,
)

GIB = 1024**3


@dataclass(frozen=True)
class Machine:
    vram: float = 0.0  # bytes of GPU memory usable by llama.cpp; 0 means CPU only
    ram: float = 0.0  # bytes of host memory; 0 means unknown (never "fits")
    unified: bool = False  # Apple silicon: GPU memory is part of `ram`
    gpu_bandwidth: float = 1000e9  # bytes/s (RTX 4090 ~1008 GB/s; M2 Max 400, M2 Ultra 800)
    ram_bandwidth: float = 60e9  # bytes/s (dual-channel DDR5)
    gpu_margin: float = 1.0 * GIB  # driver context and fragmentation
    ram_margin: float = 4.0 * GIB  # the OS and everything else


@dataclass(frozen=True)
class Workload:
    ctx: int  # KV cells: per-request context x parallel sequences
    cache_type: str = "f16"
    flash_attn: bool = True


@dataclass
class Placement:
    quant: str
    ctx: int
    cache_type: str
    weights: int
    kv_cache: int
    compute: int
    n_gpu_layers: int  # as llama.cpp counts: n_layer + 1 means every block and the output head
    experts: str  # "GPU", "CPU", "N GPU, M CPU" or "-" for a dense model
    gpu_bytes: int
    host_bytes: int
    fits: bool
    tokens_per_s: float
    strategy: str
    per_layer: list[dict[str, int]] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _on_gpu(layer: LayerWeights, cpu_moe: int) -> int:
    # Experts of the first `cpu_moe` blocks stay in host memory (llama.cpp's --n-cpu-moe).
    return layer.dense if layer.index < cpu_moe else layer.total


def _gpu_side(split: WeightSplit, h, k: int, workload: Workload, cpu_moe: int) -> tuple[int, int]:
    """(GPU bytes, host bytes of weights) with the last k blocks offloaded."""
    n = h.n_layer
    on_gpu = split.layers[n - min(k, n):]
    kv_layer = kv_bytes_per_layer(h, workload.ctx, workload.cache_type)
    gpu_weights = sum(_on_gpu(layer, cpu_moe) for layer in on_gpu) + (split.output if k > n else 0)
    return gpu_weights + kv_layer * len(on_gpu), split.total - gpu_weights


def _speed(split: WeightSplit, h, k: int, machine: Machine, workload: Workload, cpu_moe: int) -> float:
    """Tokens/s bound from bytes read per token on each side and each side's bandwidth."""
    share = h.n_expert_used / h.n_expert if h.n_expert else 1.0
    n = h.n_layer
    kv_layer = kv_bytes_per_layer(h, workload.ctx, workload.cache_type)
    gpu_read = host_read = 0.0
    for layer in split.layers:
        on_gpu = layer.index >= n - k
        dense_target = layer.dense + kv_layer
        if on_gpu:
            gpu_read += dense_target
            if layer.index < cpu_moe:
                host_read += layer.experts * share
            else:
                gpu_read += layer.experts * share
        else:
            host_read += dense_target + layer.experts * share
    if k > n:
        gpu_read += split.output
    else:
        host_read += split.output
    gpu_bw = machine.gpu_bandwidth if machine.vram else machine.ram_bandwidth
    seconds = gpu_read / gpu_bw + host_read / machine.ram_bandwidth
    return 1.0 / seconds if seconds else 0.0


def _choose(split: WeightSplit, h, machine: Machine, workload: Workload, compute: int) -> tuple[int, int]:
    """(k, cpu_moe): the placement with the best speed bound whose GPU part fits: k blocks offloaded,
    or every block offloaded with the experts of the first cpu_moe blocks kept in host memory."""
    n = h.n_layer
    if not machine.vram:
        return 0, 0
    budget = machine.vram - machine.gpu_margin - compute
    candidates = [(k, 0) for k in range(n + 2) if _gpu_side(split, h, k, workload, 0)[0] <= budget]
    if h.n_expert:
        candidates += [(n + 1, m) for m in range(1, n + 1) if _gpu_side(split, h, n + 1, workload, m)[0] <= budget]
    if not candidates:
        return 0, 0
    return max(candidates, key=lambda c: (_speed(split, h, c[0], machine, workload, c[1]), c[0]))


def place(layout: ModelLayout, machine: Machine, workload: Workload, parallel: int = 1) -> Placement:
    """The best placement of `layout` on `machine` for `workload`."""
    h = layout.hparams
    split = split_weights(layout)
    kv = kv_bytes(h, workload.ctx, workload.cache_type)
    compute = compute_bytes(h, workload.ctx, workload.flash_attn)
    k, cpu_moe = _choose(split, h, machine, workload, compute)
    gpu_weights_kv, host_weights = _gpu_side(split, h, k, workload, cpu_moe)
    host_kv = kv - kv_bytes_per_layer(h, workload.ctx, workload.cache_type) * min(k, h.n_layer)
    gpu = gpu_weights_kv + compute if k else 0
    # Host keeps a compute buffer too whenever any block runs there; otherwise only the outputs.
    host_compute = compute if (k <= h.n_layer or cpu_moe) else output_bytes(h, parallel)
    cpu_moe = min(cpu_moe, h.n_layer)
    host = host_weights + host_kv + host_compute + output_bytes(h, parallel) + runtime_bytes(h)
    if machine.unified:
        fits = gpu <= machine.vram - machine.gpu_margin and gpu + host <= machine.ram - machine.ram_margin
    else:
        fits = (not k or gpu <= machine.vram - machine.gpu_margin) and host <= machine.ram - machine.ram_margin
    n = h.n_layer
    on_cpu = n if not k else cpu_moe or max(0, n - k)
    experts = "-" if not h.n_expert else "CPU" if on_cpu == n else "GPU" if not on_cpu else f"{n - on_cpu} GPU, {on_cpu} CPU"
    strategy = ("CPU only" if not k else f"--cpu-moe" if cpu_moe == n else f"--n-cpu-moe {cpu_moe}" if cpu_moe else
                "all on GPU" if k > n else f"--n-gpu-layers {k}")
    return Placement(
        quant=layout.file_type, ctx=workload.ctx, cache_type=workload.cache_type, weights=split.total,
        kv_cache=kv, compute=compute, n_gpu_layers=k, experts=experts, gpu_bytes=gpu, host_bytes=host,
        fits=bool(machine.ram) and fits, tokens_per_s=_speed(split, h, k, machine, workload, cpu_moe),
        strategy=strategy,
        per_layer=[{"layer": layer.index, "dense": layer.dense, "experts": layer.experts} for layer in split.layers],
    )


def auto_gpu_layers(layout: ModelLayout, vram: float, workload: Workload, cpu_moe: bool = False) -> int:
    """For `--n-gpu-layers auto`: the most blocks whose weights, KV cache and compute fit in `vram`."""
    h = layout.hparams
    split = split_weights(layout)
    budget = vram - Machine().gpu_margin - compute_bytes(h, workload.ctx, workload.flash_attn)
    moe = h.n_layer if cpu_moe else 0
    fitting = [k for k in range(h.n_layer + 2) if _gpu_side(split, h, k, workload, moe)[0] <= budget]
    return max(fitting, default=0)


def bytes_per_token(layout: ModelLayout) -> float:
    return active_bytes_per_token(split_weights(layout), layout.hparams)
