"""A tiny random Mixtral-shaped GGUF, written with gguf's GGUFWriter at test time (never committed).

llama architecture with 8 experts (top-2) merged into 3-D ffn_*_exps tensors, as llama.cpp's converter
writes Mixtral and WizardLM-2-8x22B. Hidden and expert sizes of 256 keep real K-quants (smaller rows
fall back to other types), and 8 experts trigger the same quant-mix rules as the flagship.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

import gguf
import llama_cpp
import numpy as np

from edge.plan.gguf_info import Hyperparameters


@dataclass(frozen=True)
class TinyMoe:
    layers: int = 2
    hidden: int = 256
    ffn: int = 256
    heads: int = 8
    kv_heads: int = 2
    experts: int = 8
    experts_used: int = 2
    context: int = 4096

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def hyperparameters(self, vocab: int) -> Hyperparameters:
        return Hyperparameters(
            n_layer=self.layers, n_embd=self.hidden, n_head=self.heads, n_head_kv=self.kv_heads,
            head_dim=self.head_dim, n_ff=self.ffn, n_expert=self.experts, n_expert_used=self.experts_used,
            n_vocab=vocab, n_ctx_train=self.context,
        )


def _vocab() -> tuple[list[bytes], list[float], list[int]]:
    # A SentencePiece-style vocabulary: <unk> <s> </s>, 256 byte-fallback tokens, a few letters and words.
    tokens = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{b:02X}>".encode() for b in range(256)]
    types = [2, 3, 3] + [6] * 256  # unknown, control, control, byte
    words = [chr(c).encode() for c in range(ord("a"), ord("z") + 1)]
    words += ["\u2581" + w for w in ("the", "a", "is", "of", "and", "to", "in", "it")]
    words = [w.encode() if isinstance(w, str) else w for w in words]
    tokens += words
    types += [1] * len(words)
    scores = [0.0] * 259 + [-float(i) for i in range(len(words))]
    return tokens, scores, types


def write_tiny_moe(path: Path, shape: TinyMoe = TinyMoe(), seed: int = 0, *, never_ends: bool = False,
                   chat_template: str | None = None) -> int:
    """Write an F32 tiny Mixtral to `path`; returns its vocabulary size.

    never_ends: the output row of </s> is zero, so its logit is 0 while the largest of the others is
    positive: greedy decoding never ends a reply early (benchmarks need replies of a fixed length)."""
    rng = np.random.default_rng(seed)
    tokens, scores, types = _vocab()
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-moe")
    writer.add_context_length(shape.context)
    writer.add_embedding_length(shape.hidden)
    writer.add_block_count(shape.layers)
    writer.add_feed_forward_length(shape.ffn)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_rope_freq_base(1e6)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_expert_count(shape.experts)
    writer.add_expert_used_count(shape.experts_used)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    if chat_template is not None:
        writer.add_chat_template(chat_template)

    def weight(*numpy_shape: int) -> np.ndarray:
        return (rng.standard_normal(numpy_shape) * 0.02).astype(np.float32)

    h, f, e, kv = shape.hidden, shape.ffn, shape.experts, shape.kv_heads * shape.head_dim
    # numpy shapes are ggml's ne reversed: ne [n_embd, n_vocab] is numpy (n_vocab, n_embd).
    writer.add_tensor("token_embd.weight", weight(len(tokens), h))
    for i in range(shape.layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(h, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.attn_q.weight", weight(h, h))
        writer.add_tensor(f"blk.{i}.attn_k.weight", weight(kv, h))
        writer.add_tensor(f"blk.{i}.attn_v.weight", weight(kv, h))
        writer.add_tensor(f"blk.{i}.attn_output.weight", weight(h, h))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(h, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate_inp.weight", weight(e, h))
        writer.add_tensor(f"blk.{i}.ffn_gate_exps.weight", weight(e, f, h))
        writer.add_tensor(f"blk.{i}.ffn_up_exps.weight", weight(e, f, h))
        writer.add_tensor(f"blk.{i}.ffn_down_exps.weight", weight(e, h, f))
    writer.add_tensor("output_norm.weight", np.ones(h, dtype=np.float32))
    output = weight(len(tokens), h)
    if never_ends:
        output[2] = 0.0
    writer.add_tensor("output.weight", output)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return len(tokens)


# Quant name -> llama.cpp file type; the same seven file types as the flagship's published sizes.
FTYPES = {"Q2_K": 10, "Q3_K_M": 12, "IQ4_XS": 30, "Q4_K_M": 15, "Q5_K_M": 17, "Q6_K": 18, "Q8_0": 7}


class TinyMoeFiles:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.source = folder / "tiny-moe-F32.gguf"
        vocab_file = folder / "vocab.txt"
        if not self.source.is_file() or not vocab_file.is_file():
            vocab_file.write_text(str(write_tiny_moe(self.source)))
        self.hparams: Hyperparameters = TinyMoe().hyperparameters(int(vocab_file.read_text()))

    def quantized(self, quant: str) -> Path:
        path = self.folder / f"tiny-moe-{quant}.gguf"
        if not path.is_file():
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype, params.nthread = FTYPES[quant], 2
            partial = path.with_suffix(".part")
            status = llama_cpp.llama_model_quantize(str(self.source).encode(), str(partial).encode(), ctypes.byref(params))
            assert status == 0, f"llama_model_quantize to {quant} failed"
            partial.rename(path)
        return path
