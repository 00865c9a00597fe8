"""Random-weight llama GGUFs of a chosen shape and file type: stand-ins for timing kernels.

`edge serve` times its CPU kernel candidates on one of these (edge/plan/cpu_kernels.py) instead of
on the served model, which may be 100 GB: the same architecture (dense or MoE), the same file type,
so llama.cpp's quantizer picks the same mix of tensor types, at a size that loads in a moment.
Rows are multiples of 256 so K-quants stay K-quants (smaller rows fall back to other types).
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path

import llama_cpp  # noqa: F401  (loaded before gguf: see edge/__init__.py)
import gguf
import numpy as np

from .errors import ConvertError

# Tokens beyond the 3 specials and 256 byte-fallback pieces, so the output head has some width.
_WORDS = 1024 - 259


@dataclass(frozen=True)
class SyntheticShape:
    layers: int = 4
    hidden: int = 1024
    ffn: int = 2816
    heads: int = 16
    kv_heads: int = 4
    experts: int = 0  # 0: dense; otherwise merged ffn_*_exps tensors, as llama.cpp writes Mixtral
    experts_used: int = 2
    context: int = 2048
    tied_output: bool = False  # no output.weight: llama.cpp multiplies by token_embd instead

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def _vocabulary() -> tuple[list[bytes], list[float], list[int]]:
    # SentencePiece-style: <unk> <s> </s>, byte fallback, then plain word pieces.
    tokens = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{b:02X}>".encode() for b in range(256)]
    tokens += [f"\u2581w{i}".encode() for i in range(_WORDS)]
    types = [2, 3, 3] + [6] * 256 + [1] * _WORDS
    scores = [0.0] * 259 + [-float(i) for i in range(_WORDS)]
    return tokens, scores, types


def _write_f16(path: Path, shape: SyntheticShape, seed: int) -> None:
    rng = np.random.default_rng(seed)
    tokens, scores, types = _vocabulary()
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("synthetic")
    writer.add_context_length(shape.context)
    writer.add_embedding_length(shape.hidden)
    writer.add_block_count(shape.layers)
    writer.add_feed_forward_length(shape.ffn)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_rope_freq_base(1e4)
    writer.add_layer_norm_rms_eps(1e-5)
    if shape.experts:
        writer.add_expert_count(shape.experts)
        writer.add_expert_used_count(shape.experts_used)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)

    def weight(*numpy_shape: int) -> np.ndarray:  # numpy shapes are ggml's ne reversed
        return (rng.standard_normal(numpy_shape, dtype=np.float32) * 0.02).astype(np.float16)

    h, f, kv, e = shape.hidden, shape.ffn, shape.kv_heads * shape.head_dim, shape.experts
    norm = np.ones(h, dtype=np.float32)
    writer.add_tensor("token_embd.weight", weight(len(tokens), h))
    for i in range(shape.layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", norm)
        writer.add_tensor(f"blk.{i}.attn_q.weight", weight(h, h))
        writer.add_tensor(f"blk.{i}.attn_k.weight", weight(kv, h))
        writer.add_tensor(f"blk.{i}.attn_v.weight", weight(kv, h))
        writer.add_tensor(f"blk.{i}.attn_output.weight", weight(h, h))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", norm)
        if e:
            writer.add_tensor(f"blk.{i}.ffn_gate_inp.weight", weight(e, h).astype(np.float32))
            for name, rows, cols in (("gate", f, h), ("up", f, h), ("down", h, f)):
                writer.add_tensor(f"blk.{i}.ffn_{name}_exps.weight", weight(e, rows, cols))
        else:
            for name, rows, cols in (("gate", f, h), ("up", f, h), ("down", h, f)):
                writer.add_tensor(f"blk.{i}.ffn_{name}.weight", weight(rows, cols))
    writer.add_tensor("output_norm.weight", norm)
    if not shape.tied_output:
        writer.add_tensor("output.weight", weight(len(tokens), h))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_synthetic(path: Path, file_type: int, shape: SyntheticShape = SyntheticShape(), seed: int = 0,
                    threads: int = 1, token_embd_type: int | None = None, output_type: int | None = None) -> Path:
    """Write a random model of `shape` quantized to llama.cpp file type `file_type` at `path`;
    `token_embd_type` and `output_type` (ggml types) override the quantizer's choice for those two."""
    source = path.with_name(path.name + ".f16.part")
    _write_f16(source, shape, seed)
    try:
        if file_type == gguf.LlamaFileType.MOSTLY_F16:
            os.replace(source, path)
            return path
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype, params.nthread = file_type, threads
        if token_embd_type is not None:
            params.token_embedding_type = token_embd_type
        if output_type is not None:
            params.output_tensor_type = output_type
        status = llama_cpp.llama_model_quantize(os.fsencode(source), os.fsencode(path), ctypes.byref(params))
        if status != 0:
            raise ConvertError(f"llama.cpp could not quantize a synthetic model to file type {file_type}")
        return path
    finally:
        source.unlink(missing_ok=True)
