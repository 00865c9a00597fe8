"""How much memory a model needs: weights per layer, KV cache, compute buffers.

Weights are exact (sums of the tensor table). The KV cache is exact (llama.cpp's cache is a K and a V
row per layer per cell). Compute buffers are an estimate of llama.cpp's scheduler reservation, which
is the peak of two phases of the worst-case batch: the per-layer phase (attention mask or KQ
scores, plus activations) and the output phase (logits for every token of the batch). The
activation term (4 x hidden + 3 x FFN width x active experts floats per token) was checked against
llama.cpp's "compute buffer size" lines on this CPU build for SmolLM2 and a tiny Mixtral.
Beyond its buffers llama.cpp holds a few MiB of its own plus the vocabulary's tables (runtime_bytes).
"""

from __future__ import annotations

from dataclasses import dataclass

import gguf

from edge.plan.gguf_info import Hyperparameters, ModelLayout

CACHE_TYPES = ("f16", "q8_0", "q4_0")
KV_PAD = 256  # llama.cpp rounds the cache's cell count up to this
DEFAULT_UBATCH = 512
MIB = 2**20
# Host memory llama.cpp holds outside its buffers, measured as RSS growth on this CPU build: about
# 4 MiB whatever the model (threads, graph and tensor metadata), plus the vocabulary's tables per
# token: 190-200 bytes for SentencePiece (32000 tokens: 6.0 MiB), 370-430 for BPE, whose merge
# ranks double it (49152 tokens: 18.4 MiB; 128256: 52.2 MiB).
RUNTIME_FIXED_BYTES = 4 * MIB
VOCAB_BYTES_PER_TOKEN = {"llama": 200, "gpt2": 400}


def runtime_bytes(h: Hyperparameters) -> int:
    """llama.cpp's own host memory beyond weights, KV cache and compute buffers."""
    return RUNTIME_FIXED_BYTES + h.n_vocab * VOCAB_BYTES_PER_TOKEN.get(h.tokenizer, 400)


def cache_bytes_per_element(cache_type: str) -> float:
    if cache_type not in CACHE_TYPES:
        raise ValueError(f"unknown cache type {cache_type!r}: expected one of {', '.join(CACHE_TYPES)}")
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[cache_type.upper()]]
    return size / block


def kv_cells(ctx: int) -> int:
    return -(-ctx // KV_PAD) * KV_PAD


def kv_bytes_per_layer(h: Hyperparameters, ctx: int, cache_type: str = "f16") -> int:
    """K and V of one layer for `ctx` cells."""
    return int(2 * kv_cells(ctx) * h.n_head_kv * h.head_dim * cache_bytes_per_element(cache_type))


def kv_bytes(h: Hyperparameters, ctx: int, cache_type: str = "f16") -> int:
    return h.n_layer * kv_bytes_per_layer(h, ctx, cache_type)


def compute_bytes(h: Hyperparameters, ctx: int, flash_attn: bool = True, ubatch: int = DEFAULT_UBATCH) -> int:
    """Estimated compute buffer for a context of `ctx` cells and batches of `ubatch` tokens."""
    cells = kv_cells(ctx)
    # Flash attention needs only the f16 mask; without it the f32 KQ scores of every head exist at once.
    attention = cells * ubatch * (2 if flash_attn else 4 * h.n_head + 4)
    width = h.n_ff * max(1, h.n_expert_used)
    activations = ubatch * 4 * (4 * h.n_embd + 3 * width)
    logits = ubatch * 4 * (h.n_vocab + h.n_embd)
    return max(attention + activations, logits)


def output_bytes(h: Hyperparameters, parallel: int) -> int:
    """llama.cpp's output buffer: one row of logits per sequence."""
    return parallel * h.n_vocab * 4


@dataclass(frozen=True)
class LayerWeights:
    """Bytes of one repeating block, split the way --cpu-moe splits it."""

    index: int
    dense: int  # attention, norms, router: everything --cpu-moe leaves on the GPU
    experts: int  # merged expert tensors

    @property
    def total(self) -> int:
        return self.dense + self.experts


@dataclass(frozen=True)
class WeightSplit:
    layers: tuple[LayerWeights, ...]
    token_embd: int  # input embeddings: always in host memory (llama.cpp reads rows with get_rows)
    output: int  # output norm and head: on the GPU only when every layer is

    @property
    def total(self) -> int:
        return self.token_embd + self.output + sum(layer.total for layer in self.layers)

    @property
    def experts(self) -> int:
        return sum(layer.experts for layer in self.layers)


def split_weights(layout: ModelLayout) -> WeightSplit:
    n = layout.hparams.n_layer
    dense, experts = [0] * n, [0] * n
    token_embd = output = 0
    for tensor in layout.tensors:
        if tensor.layer is not None:
            (experts if tensor.is_expert else dense)[tensor.layer] += tensor.nbytes
        elif tensor.name.startswith("token_embd"):
            token_embd += tensor.nbytes
        else:
            output += tensor.nbytes
    layers = tuple(LayerWeights(i, dense[i], experts[i]) for i in range(n))
    return WeightSplit(layers, token_embd, output)


def active_bytes_per_token(split: WeightSplit, h: Hyperparameters) -> float:
    """Weight bytes one decoded token reads: all dense weights, top-k of n experts, one embedding row."""
    share = h.n_expert_used / h.n_expert if h.n_expert else 1.0
    dense = sum(layer.dense for layer in split.layers) + split.output
    return dense + split.experts * share + split.token_embd / max(1, h.n_vocab)
