"""llama.cpp on our GGUFs vs a transformers forward pass on the same checkpoint."""

from __future__ import annotations

import numpy as np
import pytest

from .llama_utils import gguf_logits, mean_kl, reference

MODELS = ["tiny-mixtral", "tiny-llama", "smollm2"]
# Max |llama.cpp - transformers| as a fraction of the reference logits' standard deviation.
# Measured (f32 KV cache): f32 <= 0.001% (summation order only); bf16 1.8% on the tiny random
# models and 6.1% on SmolLM2's 30 real layers, because llama.cpp rounds activations to bf16
# before every bf16 matmul (the weights themselves are lossless, see test_bf16_is_lossless).
LOGIT_BOUND = {"F32": 1e-4, "BF16": 0.10}
# Mean KL(bf16 || quant) per position; measured up to 0.009 (Q8_0) and 0.107 (Q4_K_M, SmolLM2,
# whose 576-wide rows are not multiples of 256 so llama.cpp falls back to legacy quants).
KL_BOUND = {"Q8_0": 0.02, "Q4_K_M": 0.25}


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("qtype", ["F32", "BF16"])
def test_logits_match_transformers(checkpoint, converted, model, qtype):
    ids, ref = reference(checkpoint(model))
    got = gguf_logits(converted(model, qtype), list(ids))
    assert got.shape == ref.shape
    assert (got.argmax(-1) == ref.argmax(-1)).all(), "top-1 token differs at some position"
    rel = np.abs(got - ref).max() / ref.std()
    print(f"{model} {qtype}: max|diff| = {np.abs(got - ref).max():.4g} ({rel:.3%} of logit std)")
    assert rel < LOGIT_BOUND[qtype]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_K_M"])
def test_quant_kl_against_bf16(checkpoint, converted, model, qtype):
    ids, _ = reference(checkpoint(model))
    base = gguf_logits(converted(model, "BF16"), list(ids))
    quant = gguf_logits(converted(model, qtype), list(ids))
    kl = mean_kl(base, quant)
    print(f"{model} {qtype}: mean KL vs bf16 = {kl:.5f}")
    assert 0 < kl < KL_BOUND[qtype]  # 0 would mean the quant is not a quant at all


@pytest.mark.parametrize("model", ["tiny-mixtral", "smollm2"])
def test_bf16_is_lossless(converted, model):
    """Every tensor of the bf16 GGUF widens to exactly the f32 GGUF's values."""
    import gguf

    wide = {t.name: t for t in gguf.GGUFReader(converted(model, "F32")).tensors}
    narrow = gguf.GGUFReader(converted(model, "BF16")).tensors
    assert len(narrow) == len(wide)
    for t in narrow:
        ref = np.asarray(wide[t.name].data)
        if t.tensor_type == gguf.GGMLQuantizationType.BF16:
            got = (np.asarray(t.data).view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            got = np.asarray(t.data)
        assert np.array_equal(got.reshape(ref.shape), ref), t.name
