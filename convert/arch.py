"""Architecture tables: HF tensor name -> GGUF tensor + transform, and the hyperparameters.

Adding a family is one more entry in ARCHITECTURES (plus its rules if the names differ).
Llama, Mistral and Mixtral all become llama.cpp's `llama` architecture; Mixtral's per-expert
matrices are merged into one 3-D tensor per layer and projection, the way llama.cpp loads them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from math import prod

import gguf
from gguf import MODEL_TENSOR as T

from .errors import ConvertError
from .safetensors import TensorRef


@dataclass(frozen=True)
class Rule:
    """One HF name pattern. Groups: `bid` (layer) and, for experts, `xid` (expert index)."""

    pattern: str
    tensor: T
    # Q and K are stored by HF in "rotate half" order; llama.cpp's rope wants interleaved pairs,
    # so their rows are permuted per head ("q" uses the attention heads, "k" the KV heads).
    permute: str = ""


LLAMA_RULES = (
    Rule(r"model\.embed_tokens\.weight", T.TOKEN_EMBD),
    Rule(r"model\.norm\.weight", T.OUTPUT_NORM),
    Rule(r"lm_head\.weight", T.OUTPUT),
    Rule(r"model\.layers\.(?P<bid>\d+)\.input_layernorm\.weight", T.ATTN_NORM),
    Rule(r"model\.layers\.(?P<bid>\d+)\.self_attn\.q_proj\.weight", T.ATTN_Q, permute="q"),
    Rule(r"model\.layers\.(?P<bid>\d+)\.self_attn\.k_proj\.weight", T.ATTN_K, permute="k"),
    Rule(r"model\.layers\.(?P<bid>\d+)\.self_attn\.v_proj\.weight", T.ATTN_V),
    Rule(r"model\.layers\.(?P<bid>\d+)\.self_attn\.o_proj\.weight", T.ATTN_OUT),
    Rule(r"model\.layers\.(?P<bid>\d+)\.post_attention_layernorm\.weight", T.FFN_NORM),
    Rule(r"model\.layers\.(?P<bid>\d+)\.mlp\.gate_proj\.weight", T.FFN_GATE),
    Rule(r"model\.layers\.(?P<bid>\d+)\.mlp\.up_proj\.weight", T.FFN_UP),
    Rule(r"model\.layers\.(?P<bid>\d+)\.mlp\.down_proj\.weight", T.FFN_DOWN),
    # Mixtral MoE: router and experts (w1 = gate, w3 = up, w2 = down).
    Rule(r"model\.layers\.(?P<bid>\d+)\.block_sparse_moe\.gate\.weight", T.FFN_GATE_INP),
    Rule(r"model\.layers\.(?P<bid>\d+)\.block_sparse_moe\.experts\.(?P<xid>\d+)\.w1\.weight", T.FFN_GATE_EXP),
    Rule(r"model\.layers\.(?P<bid>\d+)\.block_sparse_moe\.experts\.(?P<xid>\d+)\.w3\.weight", T.FFN_UP_EXP),
    Rule(r"model\.layers\.(?P<bid>\d+)\.block_sparse_moe\.experts\.(?P<xid>\d+)\.w2\.weight", T.FFN_DOWN_EXP),
)
# Buffers some checkpoints carry that llama.cpp recomputes.
IGNORED = re.compile(r".*\.rotary_emb\.inv_freq")


@dataclass(frozen=True)
class ArchSpec:
    arch: gguf.MODEL_ARCH
    rules: tuple[Rule, ...]


ARCHITECTURES: dict[str, ArchSpec] = {
    "LlamaForCausalLM": ArchSpec(gguf.MODEL_ARCH.LLAMA, LLAMA_RULES),
    "MistralForCausalLM": ArchSpec(gguf.MODEL_ARCH.LLAMA, LLAMA_RULES),
    "MixtralForCausalLM": ArchSpec(gguf.MODEL_ARCH.LLAMA, LLAMA_RULES),
}


@dataclass
class OutTensor:
    """One GGUF tensor to write: its sources in order (several for merged experts)."""

    name: str
    kind: T
    shape: tuple[int, ...]  # numpy order (outermost first)
    sources: list[TensorRef] = field(default_factory=list)
    permute_heads: int = 0  # 0: none; else the head count for the q/k row permutation

    @property
    def n_elements(self) -> int:
        return prod(self.shape)


def spec_for(config: dict) -> tuple[str, ArchSpec]:
    archs = config.get("architectures") or []
    name = archs[0] if archs else "<none>"
    if name not in ARCHITECTURES:
        raise ConvertError(f"unknown architecture {name} (supported: {', '.join(ARCHITECTURES)})")
    return name, ARCHITECTURES[name]


def plan(config: dict, spec: ArchSpec, tensors: dict[str, TensorRef]) -> list[OutTensor]:
    """Map every source tensor; order follows the source files so reads stay sequential."""
    compiled = [(re.compile(r.pattern), r) for r in spec.rules]
    heads = {"q": config["num_attention_heads"], "k": config.get("num_key_value_heads", config["num_attention_heads"])}
    out: dict[str, OutTensor] = {}
    experts: dict[str, dict[int, TensorRef]] = {}
    for ref in sorted(tensors.values(), key=lambda r: (str(r.path), r.offset)):
        if IGNORED.fullmatch(ref.name):
            continue
        rule, m = _match(compiled, ref.name)
        bid = int(m.group("bid")) if "bid" in m.groupdict() else None
        name = gguf.TENSOR_NAMES[rule.tensor].format(bid=bid) + ".weight"
        if "xid" in m.groupdict():
            experts.setdefault(name, {})[int(m.group("xid"))] = ref
            out.setdefault(name, OutTensor(name, rule.tensor, ()))
            continue
        out[name] = OutTensor(name, rule.tensor, ref.shape, [ref], heads[rule.permute] if rule.permute else 0)
    for name, by_index in experts.items():
        out[name].sources = _expert_list(name, by_index, config)
        out[name].shape = (len(by_index), *by_index[0].shape)
    return list(out.values())


def _match(compiled: list[tuple[re.Pattern, Rule]], name: str) -> tuple[Rule, re.Match]:
    for pattern, rule in compiled:
        if m := pattern.fullmatch(name):
            return rule, m
    raise ConvertError(f"tensor {name} has no GGUF mapping for this architecture")


def _expert_list(name: str, by_index: dict[int, TensorRef], config: dict) -> list[TensorRef]:
    n = config.get("num_local_experts", 0)
    if sorted(by_index) != list(range(n)):
        raise ConvertError(f"{name}: expected experts 0..{n - 1}, found {len(by_index)}")
    first = by_index[0]
    if any(r.shape != first.shape or r.dtype != first.dtype for r in by_index.values()):
        raise ConvertError(f"{name}: experts differ in shape or dtype")
    return [by_index[i] for i in range(n)]


def add_hparams(writer: gguf.GGUFWriter, config: dict) -> None:
    """Hyperparameters, as llama.cpp's llama loader reads them."""
    n_head = config["num_attention_heads"]
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config.get("max_position_embeddings", 4096))
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(config.get("num_key_value_heads", n_head))
    writer.add_rope_freq_base(float(config.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-5)))
    if "num_local_experts" in config:
        writer.add_expert_count(config["num_local_experts"])
        writer.add_expert_used_count(config["num_experts_per_tok"])
    writer.add_vocab_size(config["vocab_size"])
    head_dim = config.get("head_dim") or config["hidden_size"] // n_head
    writer.add_rope_dimension_count(head_dim)
    if config.get("head_dim") is not None:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    _add_rope_scaling(writer, config.get("rope_scaling"))


def _add_rope_scaling(writer: gguf.GGUFWriter, scaling: dict | None) -> None:
    if not scaling:
        return
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
    elif kind == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
        writer.add_rope_scaling_orig_ctx_len(int(scaling["original_max_position_embeddings"]))
    elif kind != "default":
        raise ConvertError(f"unsupported rope_scaling type {kind!r}")


def permute_rows(w, n_heads: int):  # noqa: ANN001, ANN201 - numpy in, numpy out
    """HF rotate-half row order -> llama.cpp interleaved order, per head."""
    rows = w.shape[0]
    return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
