"""Reference (transformers) and llama.cpp runs shared by the numeric tests."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

# A paragraph with prose, digits and code, so every position exercises something different.
TEXT = ("The quick brown fox jumps over the lazy dog near 42 Main Street in 2024. "
        "def add(a, b):\n    return a + b  # simple\nCafé, naïve, 東京, and emoji 🚀 too.")
GGML_TYPE_F32 = 0


def plain_kernels() -> None:
    """Make llama_cpp.Llama load with plain CPU kernels, as edge's --cpu-kernels plain.

    Llama() has no use_extra_bufts parameter and llama.cpp's default (AMX first) faults on some AMX
    machines, so the CPU backend's list of extra buffer types is emptied for this process instead
    (edge's own loads set the list they need each time)."""
    from edge.engine.backends import restrict_extra_buffer_types

    restrict_extra_buffer_types(())


def load(path: Path, **kw):  # noqa: ANN201 - a llama_cpp.Llama
    import llama_cpp

    plain_kernels()
    # f32 KV cache: llama.cpp's default f16 cache adds rounding we do not want to measure here.
    return llama_cpp.Llama(str(path), n_ctx=512, n_threads=2, verbose=False, seed=0,
                           type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32, **kw)


def gguf_logits(path: Path, ids: list[int]) -> np.ndarray:
    llm = load(path, logits_all=True)
    llm.eval(ids)
    out = np.array(llm.scores[: len(ids)], dtype=np.float64)
    llm.close()
    return out


@lru_cache(maxsize=8)
def reference(directory: Path) -> tuple[tuple[int, ...], np.ndarray]:
    """Token ids of TEXT and the transformers float32 logits for them (CPU)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = AutoTokenizer.from_pretrained(directory)(TEXT).input_ids
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double().numpy()
    return tuple(ids), logits


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def mean_kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    """Mean over positions of KL(P || Q), P the reference distribution."""
    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return float((np.exp(lp) * (lp - lq)).sum(-1).mean())
