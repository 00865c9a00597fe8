"""Pure parts checked against the reference libraries."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from convert.arch import permute_rows
from convert.vocab import read_sentencepiece


def test_sentencepiece_reader_matches_library():
    import mistral_common
    from sentencepiece import SentencePieceProcessor

    path = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    sp = SentencePieceProcessor(model_file=str(path))
    pieces = read_sentencepiece(path)
    assert len(pieces) == sp.vocab_size() == 32000
    for i, (piece, score, kind) in enumerate(pieces):
        assert piece.decode() == sp.IdToPiece(i)
        assert score == np.float32(sp.GetScore(i))
        assert (kind == 6) == sp.IsByte(i) and (kind == 3) == sp.IsControl(i) and (kind == 2) == sp.IsUnknown(i)


def test_permute_matches_transformers_inverse():
    """transformers' GGUF loader undoes llama.cpp's q/k permutation; ours must be its inverse."""
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    w = np.arange(32 * 6, dtype=np.float32).reshape(32, 6)
    back = LlamaTensorProcessor()._reverse_permute_weights(permute_rows(w, 4), 4, 4)
    assert np.array_equal(back, w)


def test_chat_through_llama_cpp(converted):
    """The converted bf16 GGUF loads and chats with its embedded template."""
    import llama_cpp

    from .llama_utils import plain_kernels

    plain_kernels()
    llm = llama_cpp.Llama(str(converted("smollm2", "BF16")), n_ctx=256, n_threads=2, verbose=False, seed=0)
    out = llm.create_chat_completion([{"role": "user", "content": "Say hello."}], max_tokens=12, temperature=0)
    text = out["choices"][0]["message"]["content"]
    assert text.strip() and "<|im_" not in text
    llm.close()


def test_mixtral_metadata_and_merged_experts(converted):
    import gguf

    r = gguf.GGUFReader(converted("tiny-mixtral", "BF16"))
    f = {k: v.contents() for k, v in r.fields.items() if not k.startswith(("GGUF.", "tokenizer.ggml."))}
    assert f["general.architecture"] == "llama"
    assert (f["llama.expert_count"], f["llama.expert_used_count"]) == (4, 2)
    assert (f["llama.attention.head_count"], f["llama.attention.head_count_kv"]) == (4, 2)
    assert (f["llama.rope.freq_base"], f["llama.context_length"], f["llama.block_count"]) == (1e6, 2048, 2)
    assert f["general.file_type"] == gguf.LlamaFileType.MOSTLY_BF16
    tensors = {t.name: t for t in r.tensors}
    for name in ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"):
        t = tensors[f"blk.1.{name}.weight"]
        assert len(t.shape) == 3 and int(t.shape[2]) == 4  # ggml order: (cols, rows, experts)
    assert not any(".experts." in n for n in tensors)
    assert tensors["blk.0.ffn_gate_inp.weight"].tensor_type == gguf.GGMLQuantizationType.F32
