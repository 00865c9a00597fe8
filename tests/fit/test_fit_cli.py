"""`edge plan` and `edge info` from the command line: output shapes, JSON, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edge.cards import DEFAULT_MODELS_DIR, EMBEDDED_MODEL, load_cards


def edge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge.cli", *args], capture_output=True, text=True, timeout=120)


def test_plan_from_card_prints_a_row_per_quant_and_context() -> None:
    result = edge("plan", "wizardlm-2-8x22b", "--vram", "24", "--ram", "128", "--ctx", "8192,65536")
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith(("Q", "IQ"))]
    assert len(rows) == 7 * 2
    q4 = [row.split() for row in rows if row.startswith("Q4_K_M")]
    assert q4[0][:3] == ["Q4_K_M", "8192", "f16"] and q4[0][3] == "85.6"
    assert q4[1][4] == "15.0"  # 64k of f16 KV cache: 224 KiB per token x 65536 (FACTS: 14 GiB)


def test_plan_json_places_experts_on_the_cpu_when_the_gpu_is_small() -> None:
    result = edge("plan", "wizardlm-2-8x22b", "--quant", "Q4_K_M", "--vram", "24", "--ram", "128",
                  "--ctx", "65536", "--json")
    plan = json.loads(result.stdout)["plans"][0]
    assert plan["fits"] and plan["experts"] != "GPU" and plan["gpu_bytes"] <= 24e9
    assert len(plan["per_layer"]) == 56 and plan["per_layer"][0]["experts"] > 10 * plan["per_layer"][0]["dense"]
    cpu_only = json.loads(edge("plan", "wizardlm-2-8x22b", "--quant", "Q4_K_M", "--ram", "64", "--json").stdout)
    assert [p["fits"] for p in cpu_only["plans"]] == [False, False]


def test_plan_reads_a_gguf_tensor_table() -> None:
    path = load_cards(DEFAULT_MODELS_DIR)[EMBEDDED_MODEL].gguf_path(DEFAULT_MODELS_DIR)
    result = edge("plan", str(path), "--ctx", "4096", "--cache-type", "q8_0", "--json")
    plan = json.loads(result.stdout)["plans"][0]
    assert plan["quant"] == "MOSTLY_Q4_1".removeprefix("MOSTLY_") and plan["weights"] == 96576768
    assert plan["kv_cache"] == 30 * 4096 * 192 * 2 * 34 // 32


@pytest.mark.parametrize("args, message", [
    (["plan", "no-such-model"], "unknown model"),
    (["plan", "missing.gguf"], "no such GGUF"),
    (["plan", "wizardlm-2-8x22b", "--ctx", "abc"], "comma-separated integers"),
    (["plan", "wizardlm-2-8x22b", "--vram", "-1"], "must not be negative"),
    (["plan", "smollm2-135m-instruct", "--quant", "Q4_K_M"], "no [hyperparameters]"),
    (["serve", "--override-tensor", "attn=NOPE", "--port", "0"], "unknown device"),
    (["serve", "--override-tensor", "([=CPU", "--port", "0"], "not a valid regex"),
    (["serve", "--n-gpu-layers", "many", "--port", "0"], "n_gpu_layers"),
])
def test_bad_input_is_one_line_and_nonzero(args: list[str], message: str) -> None:
    result = edge(*args)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith(("edge", "usage"))]) >= 1


def test_info_reports_build_capabilities_and_memory() -> None:
    result = edge("info", "--json")
    info = json.loads(result.stdout)
    assert info["rpc"] is True  # the Makefile builds with -DGGML_RPC=on
    assert "CPU" in info["backends"] and info["ram_total"] > 1e9
    assert any(device["type"] == "CPU" for device in info["devices"])
    assert "GPU offload" in edge("info").stdout
    # make install records which llama.cpp build it kept (tests run in the environment it made)
    assert info["llama_build"]["build"] in ("native", "isa")
    assert info["llama_build"]["line"].startswith(f"llama.cpp build: {info['llama_build']['build']} (")
    assert info["llama_build"]["line"] in edge("info").stdout
