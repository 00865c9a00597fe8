"""The tensor table a quantized GGUF would have, from a model's hyperparameters alone.

A "Q4_K_M" file is not 4.5 bits everywhere: llama.cpp's quantizer (llama-quant.cpp,
llama_tensor_get_type) picks a type per tensor from the file type, the tensor's role, its layer and
the model's shape (8-expert models get Q8_0 attn_k/attn_v, Q5_K attn_output). These rules are
restated here for the llama architecture (dense and Mixtral-style MoE) and the common file types,
so the bits per weight come from the mix itself rather than from constants fitted to file sizes.
Quantizing without an importance matrix is assumed (it changes IQ4_XS's first ffn_down layers).
"""

from __future__ import annotations

import gguf

from edge.plan.gguf_info import Hyperparameters, ModelLayout, TensorInfo

# The base type of each file type, before the per-tensor rules.
DEFAULT_TYPE = {
    "F16": "F16", "Q8_0": "Q8_0", "Q6_K": "Q6_K", "Q5_K_M": "Q5_K", "Q5_K_S": "Q5_K",
    "Q4_K_M": "Q4_K", "Q4_K_S": "Q4_K", "IQ4_XS": "IQ4_XS", "Q4_0": "Q4_0",
    "Q3_K_L": "Q3_K", "Q3_K_M": "Q3_K", "Q3_K_S": "Q3_K", "Q2_K": "Q2_K",
}
QUANTS = tuple(DEFAULT_TYPE)
# What llama.cpp substitutes when a row length is not a multiple of the type's block size.
_FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0", "IQ4_XS": "IQ4_NL"}
_MOE8_ATTN_OUTPUT_Q5K = {"Q2_K", "Q3_K_S", "Q3_K_M", "Q4_K_S", "Q4_K_M", "IQ4_XS"}


def _block(type_name: str) -> int:
    return gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]][0]


def _more_bits(i: int, n: int) -> bool:
    # llama.cpp spends more bits on the first and last eighth of layers and every third in between.
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def source_tensors(h: Hyperparameters) -> list[TensorInfo]:
    """The tensors of a llama-architecture GGUF as converted (F16 weights, F32 norms and router)."""
    kv = h.n_head_kv * h.head_dim
    q = h.n_head * h.head_dim
    tensors = [TensorInfo("token_embd.weight", (h.n_embd, h.n_vocab), "F16")]
    for i in range(h.n_layer):
        b = f"blk.{i}."
        tensors += [
            TensorInfo(b + "attn_norm.weight", (h.n_embd,), "F32"),
            TensorInfo(b + "attn_q.weight", (h.n_embd, q), "F16"),
            TensorInfo(b + "attn_k.weight", (h.n_embd, kv), "F16"),
            TensorInfo(b + "attn_v.weight", (h.n_embd, kv), "F16"),
            TensorInfo(b + "attn_output.weight", (q, h.n_embd), "F16"),
            TensorInfo(b + "ffn_norm.weight", (h.n_embd,), "F32"),
        ]
        if h.n_expert:
            e = h.n_expert
            tensors += [
                TensorInfo(b + "ffn_gate_inp.weight", (h.n_embd, e), "F32"),
                TensorInfo(b + "ffn_gate_exps.weight", (h.n_embd, h.n_ff, e), "F16"),
                TensorInfo(b + "ffn_up_exps.weight", (h.n_embd, h.n_ff, e), "F16"),
                TensorInfo(b + "ffn_down_exps.weight", (h.n_ff, h.n_embd, e), "F16"),
            ]
        else:
            tensors += [
                TensorInfo(b + "ffn_gate.weight", (h.n_embd, h.n_ff), "F16"),
                TensorInfo(b + "ffn_up.weight", (h.n_embd, h.n_ff), "F16"),
                TensorInfo(b + "ffn_down.weight", (h.n_ff, h.n_embd), "F16"),
            ]
    tensors += [
        TensorInfo("output_norm.weight", (h.n_embd,), "F32"),
        TensorInfo("output.weight", (h.n_embd, h.n_vocab), "F16"),
    ]
    return tensors


def _quantizable(t: TensorInfo) -> bool:
    return len(t.ne) >= 2 and "_norm." not in t.name and "ffn_gate_inp" not in t.name


def _attn_v(quant: str, base: str, h: Hyperparameters, i_v: int, n_v: int) -> str:
    chosen = base
    if quant == "Q2_K":
        chosen = "Q4_K" if h.n_gqa >= 4 else "Q3_K"
    elif quant == "Q3_K_M":
        chosen = "Q5_K" if i_v < 2 else "Q4_K"
    elif quant == "Q3_K_L":
        chosen = "Q5_K"
    elif quant == "IQ4_XS" and h.n_gqa >= 4:
        chosen = "Q5_K"
    elif quant in ("Q4_K_M", "Q5_K_M") and _more_bits(i_v, n_v):
        chosen = "Q6_K"
    elif quant == "Q4_K_S" and i_v < 4:
        chosen = "Q5_K"
    return "Q8_0" if h.n_expert == 8 else chosen


def _ffn_down(quant: str, base: str, i: int, n: int) -> str:
    rules = {
        "Q2_K": "Q3_K",
        "Q3_K_M": "Q5_K" if i < n // 16 else "Q4_K",
        "Q3_K_L": "Q5_K",
        "Q4_K_M": "Q6_K" if _more_bits(i, n) else base,
        "IQ4_XS": "Q5_K" if i < n // 8 else base,  # without an importance matrix
        "Q5_K_M": "Q6_K" if _more_bits(i, n) else base,
        "Q4_K_S": "Q5_K" if i < n // 8 else base,
    }
    return rules.get(quant, base)


def _attn_output(quant: str, base: str, h: Hyperparameters) -> str:
    if h.n_expert == 8:
        return "Q5_K" if quant in _MOE8_ATTN_OUTPUT_Q5K else base
    return {"Q2_K": "Q3_K", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K"}.get(quant, base)


def _chosen_type(t: TensorInfo, quant: str, h: Hyperparameters, i_v: int, n_v: int) -> str:
    base = DEFAULT_TYPE[quant]
    if base == "F16":
        return base
    name = t.name
    if name == "output.weight":
        chosen = "Q8_0" if base == "Q8_0" or t.ne[0] % _block(base) else "Q6_K"
    elif name == "token_embd.weight":
        chosen = base  # untied embeddings keep the file type's base type
    elif "attn_v.weight" in name:
        chosen = _attn_v(quant, base, h, i_v, n_v)
    elif "attn_k.weight" in name:
        chosen = "Q8_0" if h.n_expert == 8 else base
    elif "ffn_down" in name:
        chosen = _ffn_down(quant, base, t.layer or 0, h.n_layer)
    elif "attn_output.weight" in name:
        chosen = _attn_output(quant, base, h)
    else:
        chosen = base
    if t.ne[0] % _block(chosen):
        chosen = _FALLBACK.get(chosen, "F16")
        if t.ne[0] % _block(chosen):
            chosen = "F16"
    return chosen


def quantized_layout(h: Hyperparameters, quant: str, name: str = "model") -> ModelLayout:
    """The tensor table llama.cpp's quantizer would write for file type `quant`."""
    if quant not in DEFAULT_TYPE:
        raise ValueError(f"unknown quant {quant!r}: expected one of {', '.join(QUANTS)}")
    source = source_tensors(h)
    n_v = sum(1 for t in source if "attn_v.weight" in t.name)
    out, i_v = [], 0
    for t in source:
        if not _quantizable(t):
            out.append(t)
            continue
        out.append(TensorInfo(t.name, t.ne, _chosen_type(t, quant, h, i_v, n_v)))
        i_v += "attn_v.weight" in t.name
    return ModelLayout(name, h, tuple(out), quant)
