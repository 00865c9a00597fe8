"""CPU kernel benchmark: prompt and decode tokens/s under every forced --cpu-kernels choice and under auto.

Models: the embedded SmolLM2-135M (Q4_1) and the same weights requantized by llama.cpp to Q4_0,
Q4_K_M and Q8_0 (kept in ~/.cache/edge-bench/cpu-kernels, never committed). For each model, the
kernels this build offers each get a child process of their own (a kernel that faults is reported
as crashed), plus one loaded with what auto decided on an empty cache; all of them take turns within
every round, and each figure is the median over the rounds, so the machine's drifting speed hits all
alike. Writes bench/reports/cpu-kernels.md.

    make bench-cpu                   # or: .venv/bin/python bench/cpu_kernels_bench.py [--rounds N]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import edge  # noqa: F401  (loads llama.cpp before gguf)
import llama_cpp

from edge.cards import DEFAULT_MODELS_DIR, resolve_model
from edge.engine.backends import offered_kernels
from edge.plan.cpu_kernels import Trial, choose, cpu_identity, measure_kernels
from edge.plan.gguf_info import weight_types

REPORTS = Path(__file__).resolve().parent / "reports"
CACHE = Path(os.environ.get("EDGE_BENCH_CACHE", Path.home() / ".cache" / "edge-bench")) / "cpu-kernels"
QUANTS = {"Q4_0": 2, "Q4_1": None, "Q4_K_M": 15, "Q8_0": 7}  # llama.cpp file types; None: the embedded file


def models() -> dict[str, Path]:
    """Quant name -> GGUF: the embedded file, and requantizations of it made once."""
    return {quant: requantized(quant) for quant in QUANTS}


def requantized(quant: str) -> Path:
    """The embedded model requantized to `quant` (a QUANTS name) by llama.cpp, made once into CACHE;
    the embedded file itself for its own type."""
    embedded = resolve_model(None, DEFAULT_MODELS_DIR)[0]
    file_type = QUANTS[quant]
    if file_type is None:
        return embedded
    path = CACHE / f"SmolLM2-135M-Instruct.{quant}.gguf"
    if not path.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype, params.nthread, params.allow_requantize = file_type, os.cpu_count() or 1, True
        partial = path.with_suffix(".part")
        if llama_cpp.llama_model_quantize(os.fsencode(embedded), os.fsencode(partial), ctypes.byref(params)) != 0:
            raise SystemExit(f"llama.cpp could not requantize {embedded} to {quant}")
        partial.rename(path)
    return path


def measure(path: Path, threads: int, rounds: int, workload: tuple[int, int]) -> dict:
    model = weight_types(path)
    quiet = lambda: ""  # noqa: E731 - the load is this benchmark's own children: keep the verdict
    with tempfile.TemporaryDirectory() as cache:
        cold = choose("auto", model, threads, Path(cache), busy=quiet)
        warm_started = time.monotonic()
        warm = choose("auto", model, threads, Path(cache), busy=quiet)
        warm_seconds = time.monotonic() - warm_started
    assert warm.cached and warm.kernel == cold.kernel
    forced = offered_kernels()
    trials = measure_kernels(path, [*forced, cold.kernel], threads, rounds, workload)
    return {"forced": trials[:-1], "auto": trials[-1], "choice": cold, "probe_cold_s": cold.seconds,
            "probe_warm_s": warm_seconds}


def _figures(trial: Trial) -> str:
    return f"{trial.prompt_tps:.0f} | {trial.decode_tps:.1f}" if trial.ok else f"{trial.failure} | {trial.failure}"


def _ratio(auto: Trial, forced: list[Trial], field: str) -> str:
    best = max((getattr(t, field) for t in forced if t.ok), default=0.0)
    return f"{getattr(auto, field) / best:.3f}x" if best and auto.ok else "n/a"


def report(results: dict[str, dict], threads: int, rounds: int, workload: tuple[int, int], load: list[str]) -> str:
    cpu = cpu_identity()
    amx = sorted(flag for flag in cpu["flags"] if flag.startswith("amx"))
    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = [
        "# CPU kernels",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `make bench-cpu` (bench/cpu_kernels_bench.py), edge at {revision}.",
        "",
        f"- CPU: {cpu['model']} ({os.cpu_count()} cores seen), AMX flags: {', '.join(amx) or 'none'}; "
        f"Linux {platform.release()}; load average (1/5/15 min) before: {', '.join(load)}, after: "
        f"{', '.join(_load())}.",
        f"- llama-cpp-python {llama_cpp.__version__}, compiled: {llama_cpp.llama_print_system_info().decode().strip()}",
        f"- Kernels this build offers: {', '.join(offered_kernels())}. {threads} threads. Each round: a "
        f"{workload[0]}-token prompt as one batch, then {workload[1]} one-token decode steps; every figure is the "
        f"median of {rounds} rounds, all kernels (and auto) taking turns within each round.",
        "- auto: what `--cpu-kernels auto` chose on an empty cache, loaded in a child of its own and measured "
        "beside the forced choices. Probe: its cost on a first start (empty cache) and on a later one (cached).",
        "",
        "| model | kernels | prompt tok/s | decode tok/s |",
        "| --- | --- | --- | --- |",
    ]
    for quant, result in results.items():
        for trial in result["forced"]:
            lines.append(f"| {quant} | {trial.kernel} | {_figures(trial)} |")
        lines.append(f"| {quant} | **auto: {result['auto'].kernel}** | {_figures(result['auto'])} |")
    lines += ["", "| model | auto chose | auto / best forced, prompt | auto / best forced, decode | probe: first start s | cached s | the probe's own figures |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for quant, result in results.items():
        auto, forced, choice = result["auto"], result["forced"], result["choice"]
        probe = "; ".join(trial.describe() for trial in choice.trials)
        lines.append(f"| {quant} | {auto.kernel} | {_ratio(auto, forced, 'prompt_tps')} | {_ratio(auto, forced, 'decode_tps')} "
                     f"| {result['probe_cold_s']:.1f} | {result['probe_warm_s']:.3f} | {probe} |")
    lines += ["", "auto chooses by decode speed (prompt speed is reported, not used); decode speeds within 2% count "
              "as a tie, which goes to the kernels with fewer ways to fail (plain, then repack, then amx)."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--decode", type=int, default=128)
    parser.add_argument("--quants", default=",".join(QUANTS))
    parser.add_argument("--reports", type=Path, default=REPORTS)
    args = parser.parse_args()
    workload = (args.prompt, args.decode)
    load = _load()
    files = models()
    results = {}
    for quant in args.quants.split(","):
        print(f"measuring {quant}", file=sys.stderr)
        results[quant] = measure(files[quant], args.threads, args.rounds, workload)
    args.reports.mkdir(parents=True, exist_ok=True)
    out = args.reports / "cpu-kernels.md"
    out.write_text(report(results, args.threads, args.rounds, workload, load))
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _load() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


if __name__ == "__main__":
    sys.exit(main())
