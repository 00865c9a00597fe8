"""Tensor placement overrides reach llama.cpp: it reports each overridden tensor while loading."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from edge.engine.backends import OverrideError, TensorOverrides, devices, offered_kernels, parse_override
from edge.engine.llama_model import LlamaModel, LoadOptions

OVERRIDDEN = re.compile(r"tensor (\S+) \(.*\) buffer type overridden to (\S+)")


def _load_and_collect(path, options: LoadOptions, caplog: pytest.LogCaptureFixture) -> dict[str, str]:
    with caplog.at_level(logging.DEBUG, logger="edge.llama"):
        model = LlamaModel(path, options)
        model.close()
    return {m.group(1): m.group(2) for m in map(OVERRIDDEN.search, caplog.messages) if m}


def test_cpu_moe_places_every_expert_tensor_by_override(tiny_moe, caplog) -> None:
    overridden = _load_and_collect(tiny_moe.quantized("Q4_K_M"), LoadOptions(cpu_moe=True), caplog)
    experts = {f"blk.{i}.ffn_{kind}_exps.weight" for i in range(tiny_moe.hparams.n_layer) for kind in ("gate", "up", "down")}
    assert set(overridden) == experts
    # CPU, or CPU_REPACK where the CPU backend repacks that type for its matmul kernels.
    assert all(buffer.startswith("CPU") for buffer in overridden.values())


def test_without_overrides_llama_cpp_reports_none(tiny_moe, caplog) -> None:
    assert _load_and_collect(tiny_moe.quantized("Q4_K_M"), LoadOptions(), caplog) == {}


def test_override_tensor_pattern_selects_only_matching_tensors(tiny_moe, caplog) -> None:
    options = LoadOptions(overrides=(parse_override(r"blk\.1\.attn_q=cpu"),))
    assert set(_load_and_collect(tiny_moe.quantized("Q4_K_M"), options, caplog)) == {"blk.1.attn_q.weight"}


def test_unknown_device_and_bad_patterns_are_refused() -> None:
    with pytest.raises(OverrideError, match="unknown device 'NOPE'.*cpu"):
        TensorOverrides([("attn", "NOPE")])
    with pytest.raises(OverrideError, match="not a valid regex"):
        parse_override("([=CPU")
    with pytest.raises(OverrideError, match="PATTERN=DEVICE"):
        parse_override("attn_q")


def test_devices_include_the_cpu_with_its_memory() -> None:
    cpu = [device for device in devices() if device.type == "CPU"]
    assert cpu and cpu[0].total_bytes > 1e9 and 0 < cpu[0].free_bytes <= cpu[0].total_bytes


def test_n_cpu_moe_keeps_only_the_first_blocks_experts(tiny_moe, caplog) -> None:
    from edge.plan.placement import load_options
    from edge.settings import Settings

    path = tiny_moe.quantized("Q4_K_M")
    options = load_options(Settings(n_cpu_moe=1, override_tensor=r"^output\.weight=CPU"), path, 512, "plain")
    assert set(_load_and_collect(path, options, caplog)) == {
        "blk.0.ffn_gate_exps.weight", "blk.0.ffn_up_exps.weight", "blk.0.ffn_down_exps.weight", "output.weight"}


def _model_buffers(path, options: LoadOptions, caplog: pytest.LogCaptureFixture) -> set[str]:
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="edge.llama"):
        LlamaModel(path, options).close()
    return {m.group(1) for m in map(re.compile(r"(\S+) model buffer size").search, caplog.messages) if m}


@pytest.mark.skipif("avx2" not in Path("/proc/cpuinfo").read_text(), reason="llama.cpp repacks Q4_K for AVX2 CPUs only")
def test_cpu_kernels_pick_the_buffer_types_weights_go_to(tiny_moe, caplog) -> None:
    # Loading only: nothing is decoded, so even AMX kernels that fault on this machine are safe here.
    path = tiny_moe.quantized("Q4_K_M")
    assert _model_buffers(path, LoadOptions(cpu_kernels="plain"), caplog) == {"CPU_Mapped"}
    repacked = _model_buffers(path, LoadOptions(cpu_kernels="repack"), caplog)
    assert "CPU_REPACK" in repacked and "AMX" not in repacked
    if "amx" in offered_kernels():
        assert "AMX" in _model_buffers(path, LoadOptions(cpu_kernels="amx"), caplog)
        # The restriction holds for later loads too, in whichever order they come.
        assert "AMX" not in _model_buffers(path, LoadOptions(cpu_kernels="repack"), caplog)
