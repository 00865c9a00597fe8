"""The plan's numbers against published GGUF sizes, llama.cpp's own quantizer, and what llama.cpp allocates."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_moe import FTYPES

from edge.cards import DEFAULT_MODELS_DIR, EMBEDDED_MODEL, load_cards
from edge.plan.gguf_info import read_layout
from edge.plan.memory import compute_bytes, kv_bytes, runtime_bytes
from edge.plan.report import card_layouts
from edge.plan.quant_mix import quantized_layout

# Published WizardLM-2-8x22B GGUF sizes in GB (10^9 bytes), from FACTS.md.
PUBLISHED_GB = {"Q2_K": 52.2, "Q3_K_M": 67.9, "IQ4_XS": 76.5, "Q4_K_M": 85.7, "Q5_K_M": 100.1,
                "Q6_K": 115.6, "Q8_0": 149.5}
MEASURE = Path(__file__).parent / "measure.py"


@pytest.mark.parametrize("quant", PUBLISHED_GB)
def test_card_estimate_matches_published_size(quant: str) -> None:
    (layout,) = card_layouts("wizardlm-2-8x22b", DEFAULT_MODELS_DIR, quant)
    estimate = layout.weight_bytes / 1e9
    residual = (estimate - PUBLISHED_GB[quant]) / PUBLISHED_GB[quant]
    print(f"{quant}: estimate {estimate:.2f} GB, published {PUBLISHED_GB[quant]} GB, residual {residual:+.2%}")
    assert abs(residual) < 0.03


@pytest.mark.parametrize("quant", FTYPES)
def test_quant_mix_matches_llama_quantizer(tiny_moe, quant: str) -> None:
    """Every tensor of a real llama.cpp quantization has the type the card-based rules predict."""
    real = {t.name: t.type for t in read_layout(tiny_moe.quantized(quant)).tensors}
    predicted = {t.name: t.type for t in quantized_layout(tiny_moe.hparams, quant).tensors}
    assert predicted == real
    assert len({*real.values()}) > 1  # a mix, not one type: the rules were exercised


def _measure(path: Path, ctx: int, ubatch: int) -> dict[str, float]:
    result = subprocess.run([sys.executable, str(MEASURE), str(path), str(ctx), "1", str(ubatch)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def _check(path: Path, ctx: int, ubatch: int) -> tuple[dict[str, float], dict[str, float]]:
    layout = read_layout(path)
    h = layout.hparams
    planned = {"model": layout.weight_bytes, "KV": kv_bytes(h, ctx), "compute": compute_bytes(h, ctx, ubatch=ubatch)}
    actual = _measure(path, ctx, ubatch)
    for key, value in planned.items():
        print(f"{path.name} {key}: planned {value / 2**20:.2f} MiB, llama.cpp {actual[key] / 2**20:.2f} MiB, "
              f"{(value - actual[key]) / actual[key]:+.1%}")
        assert value == pytest.approx(actual[key], rel=0.10)
    # The measurement asks for logits of every token, so llama.cpp grows its output buffer to a batch.
    resident = sum(planned.values()) + ubatch * h.n_vocab * 4 + runtime_bytes(h)
    print(f"{path.name} total: planned {resident / 2**20:.1f} MiB, RSS grew {actual['rss_delta'] / 2**20:.1f} MiB, "
          f"{(resident - actual['rss_delta']) / actual['rss_delta']:+.1%}")
    return planned, {**actual, "resident_planned": resident}


def test_plan_matches_llama_cpp_for_the_embedded_model() -> None:
    card = load_cards(DEFAULT_MODELS_DIR)[EMBEDDED_MODEL]
    _, actual = _check(card.gguf_path(DEFAULT_MODELS_DIR), ctx=1024, ubatch=256)
    assert actual["resident_planned"] == pytest.approx(actual["rss_delta"], rel=0.10)


def test_plan_matches_llama_cpp_for_the_tiny_mixtral(tiny_moe) -> None:
    _, actual = _check(tiny_moe.quantized("Q4_K_M"), ctx=4096, ubatch=512)
    # A 2 MB model, so llama.cpp's fixed few MiB (runtime_bytes) are a third of the total here.
    assert actual["resident_planned"] == pytest.approx(actual["rss_delta"], rel=0.10)
