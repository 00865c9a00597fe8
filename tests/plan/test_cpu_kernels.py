"""The CPU kernel probe: real child processes timing real llama.cpp kernels on the model's own file
when it is small, else on a synthetic stand-in.

Fault injection (EDGE_TEST_PROBE_FAULT) makes one candidate's child kill itself with SIGSEGV, as
llama.cpp's AMX kernels do on some AMX machines, so the fallback is proven on any CPU.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from edge.engine.backends import offered_kernels
from edge.engine.kernel_probe import FAULT_ENV
from edge.plan.cpu_kernels import (
    CACHE_FILE, DEFAULT_PREFERENCE, OWN_FILE_MAX_BYTES, TIE, KernelChoice, Trial, cache_key, choose, pick,
    relative_speeds,
)
from edge.plan.gguf_info import weight_types
from support import EMBEDDED_GGUF, Server

THREADS = 2
QUIET = lambda: ""  # noqa: E731 - the machine counts as quiet, so verdicts are cached whatever the load
CPU_FLAGS = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""


@pytest.fixture(scope="module")
def model():
    return weight_types(EMBEDDED_GGUF)


@pytest.fixture(scope="module")
def probed(model, tmp_path_factory):
    """One real probe of every candidate this build offers, in a cache of its own."""
    cache = tmp_path_factory.mktemp("kernels")
    return cache, choose("auto", model, THREADS, cache, busy=QUIET)


def test_auto_probes_every_offered_kernel_and_picks_the_fastest_survivor(probed) -> None:
    _, choice = probed
    assert [trial.kernel for trial in choice.trials] == offered_kernels()
    assert "plain" in offered_kernels() and not choice.cached
    survivors = [trial for trial in choice.trials if trial.ok]
    assert survivors and all(trial.prompt_tps > 0 and trial.decode_tps > 0 for trial in survivors)
    assert choice.kernel == pick(survivors).kernel
    assert choice.line().startswith(f"CPU kernels: {choice.kernel} (auto; probe, ")


def test_a_small_model_is_probed_on_its_own_file_a_big_one_on_a_stand_in(model, tmp_path) -> None:
    from dataclasses import replace

    assert 0 < model.file_bytes <= OWN_FILE_MAX_BYTES
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)  # the same types on paper, but no model loads from it
    with pytest.raises(ValueError, match="no CPU kernel survived its probe"):
        choose("auto", replace(model, path=broken), THREADS, tmp_path / "own", busy=QUIET)
    big = replace(model, path=broken, file_bytes=OWN_FILE_MAX_BYTES + 1)  # the file is never opened
    assert choose("auto", big, THREADS, tmp_path / "stand-in", busy=QUIET).kernel in offered_kernels()


def test_the_fastest_decoder_wins_and_close_calls_go_to_the_simpler_kernel() -> None:
    amx, repack, plain = Trial("amx", 900, 200), Trial("repack", 900, 150), Trial("plain", 600, 160)
    assert pick([amx, repack, plain]) is amx
    assert pick([repack, plain]) is plain
    close = Trial("repack", 900, 160 * (1 + TIE / 2))
    assert pick([close, plain]) is plain
    assert pick([Trial("repack", 900, 160 * (1 + 2 * TIE)), plain]).kernel == "repack"


def test_with_rounds_kept_each_kernel_is_compared_round_by_round_with_the_simplest() -> None:
    # The host slowed down between rounds: by medians repack looks 8% faster than plain; timed in the
    # same rounds it was 1% slower in four of five.
    plain = Trial("plain", 600, 120, decode_rounds=(120, 100, 100, 140, 140))
    drifted = Trial("repack", 900, 130, decode_rounds=(130, 99, 99, 139, 139))
    assert relative_speeds([drifted, plain], DEFAULT_PREFERENCE) == [pytest.approx(0.993, abs=0.001), 1.0]
    assert pick([drifted, plain]) is plain
    faster = Trial("repack", 900, 130, decode_rounds=(125, 104, 104, 146, 146))  # +4% in every round
    assert pick([faster, plain]) is faster
    amx = Trial("amx", 900, 131, decode_rounds=(126, 105, 105, 147, 147))  # +0.8% over repack: a tie
    assert pick([amx, faster, plain]) is faster
    cached = Trial("plain", 600, 120)  # an older cache's trial has no rounds: the medians decide
    assert relative_speeds([drifted, cached], DEFAULT_PREFERENCE) == [pytest.approx(130 / 120), 1.0]
    line = KernelChoice("plain", "auto", (drifted, plain), cached=True, seconds=0.0).line()
    assert line.endswith("plain pp 600 / tg 120 tok/s; repack / plain paired by round 0.993)")  # what decided
    assert "paired" not in KernelChoice("repack", "auto", (drifted, cached), cached=True, seconds=0.0).line()


def test_a_second_start_reads_the_verdict_from_the_cache(probed, model, monkeypatch) -> None:
    cache, first = probed
    # Were anything probed again, the plain kernels' child would now die.
    monkeypatch.setenv(FAULT_ENV, "plain")
    again = choose("auto", model, THREADS, cache, busy=QUIET)
    assert again.cached and again.trials == first.trials and again.kernel == first.kernel
    assert "probe, cached" in again.line()


def test_a_verdict_taken_on_a_busy_machine_is_not_kept(model, tmp_path) -> None:
    choice = choose("auto", model, THREADS, tmp_path, busy=lambda: "load average 9.0 on 2 cores")
    assert choice.trials and not choice.cached
    assert not (tmp_path / CACHE_FILE).exists()


def test_a_kernel_that_kills_its_probe_is_never_chosen(probed, model, tmp_path, monkeypatch) -> None:
    _, honest = probed
    winner = honest.kernel
    monkeypatch.setenv(FAULT_ENV, winner)
    choice = choose("auto", model, THREADS, tmp_path)
    failed = {trial.kernel: trial.failure for trial in choice.trials if not trial.ok}
    assert failed.get(winner) == "crashed (SIGSEGV)"
    assert choice.kernel != winner and choice.kernel in offered_kernels()
    assert f"{winner} crashed (SIGSEGV)" in choice.line()


def test_a_forced_kernel_whose_probe_crashes_is_refused(model, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(FAULT_ENV, "repack")
    with pytest.raises(ValueError, match="--cpu-kernels repack: its probe crashed"):
        choose("repack", model, THREADS, tmp_path)


def test_forced_plain_needs_no_probe(model, tmp_path) -> None:
    choice = choose("plain", model, THREADS, tmp_path)
    assert choice.kernel == "plain" and choice.trials == ()
    assert not (tmp_path / CACHE_FILE).exists()


def test_a_model_without_kernel_sensitive_weights_is_not_probed(model, tmp_path) -> None:
    from dataclasses import replace

    as_f16 = replace(model, file_type=1, tensors=tuple((name, "F16" if kind != "F32" else kind)
                                                         for name, kind in model.tensors))
    choice = choose("auto", as_f16, THREADS, tmp_path)
    assert choice.kernel == "plain" and choice.trials == () and "no probe" in choice.line()
    assert not (tmp_path / CACHE_FILE).exists()


def test_the_verdict_is_kept_per_thread_count_and_tensor_types(model) -> None:
    from dataclasses import replace

    assert cache_key(model, 2) != cache_key(model, 4)
    requantized = replace(model, tensors=tuple((name, "Q8_0" if kind == "Q4_1" else kind) for name, kind in model.tensors))
    assert cache_key(model, 2) != cache_key(requantized, 2)


def test_edge_info_shows_the_decision(tmp_path) -> None:
    result = subprocess.run([sys.executable, "-m", "edge.cli", "info", "--threads", str(THREADS),
                             "--cache-dir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("CPU kernels:"))
    assert re.match(r"CPU kernels: (amx|repack|plain) \(auto; probe, [0-9.]+ s: ", line), line


def test_bad_choices_get_one_line(tmp_path) -> None:
    result = subprocess.run([sys.executable, "-m", "edge.cli", "info", "--cpu-kernels", "fast",
                             "--cache-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.startswith("edge: cpu_kernels: ")
    assert "auto, amx, repack, plain" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.skipif("amx_tile" not in CPU_FLAGS, reason="this CPU has no AMX flags: no AMX buffer can appear")
def test_on_an_amx_cpu_no_weight_lands_in_an_amx_buffer_unless_the_probe_allowed_it(tmp_path) -> None:
    # At debug level llama.cpp's own load lines reach the log: "AMX model buffer size = ..." among them.
    server = Server(["--log-level", "debug", "--ctx-size", "512"], {}, tmp_path / "serve.log")
    server.stop()
    log = server.log_path.read_text()
    verdict = re.search(r"CPU kernels: (\w+) \(auto", log)
    assert verdict, log
    buffers = set(re.findall(r"(\S+) model buffer size", log))
    assert buffers, log
    if verdict.group(1) != "amx":
        assert "AMX" not in buffers, buffers
    assert "start-up self-test: a 64-token batch decoded" in log
