"""A MoE model that does not fit in GPU memory: tokens/s with layers split by `--n-gpu-layers auto`
versus every layer on the GPU with the experts kept in host memory (`--cpu-moe`).

Needs a GPU build (`make install GPU=cuda`, or metal). Without --gguf it writes a synthetic
Mixtral-shaped model (random weights, 8 experts, top-2; experts outweigh attention about 26:1, as in
WizardLM-2-8x22B) and quantizes it to Q4_K_M, in the bench cache. --vram caps the GPU memory that
the plan may use (default: half the file plus the plan's 1 GiB driver margin), so "does not fit"
holds on any card; the last row puts every layer on the GPU with no cap, for reference. Writes
offload.md into --reports.

    .venv/bin/python bench/offload_bench.py [--gguf FILE] [--vram GB] [--threads N] [--serve-args "..."]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import httpx
import llama_cpp

from edge.plan.fit import Machine

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from support import Server  # noqa: E402
from tiny_moe import TinyMoe, write_tiny_moe  # noqa: E402

CACHE = Path(os.environ.get("EDGE_BENCH_CACHE", Path.home() / ".cache" / "edge-bench")) / "offload"
SHAPE = TinyMoe(layers=12, hidden=1024, ffn=2816, heads=16, kv_heads=4)
TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
PROMPT = "the a is of and to in it " * 14  # about 500 tokens (this vocabulary spells most letters alone)
DECODE_TOKENS = 128
RUNS = 3
# What llama.cpp says about placement while it loads (forwarded to our log at --log-level debug).
PLACEMENT_LINES = re.compile(r"n-gpu-layers auto:.*|offloaded \d+/\d+ layers to GPU|\S+ model buffer size = .*")


def synthetic_model(threads: int) -> Path:
    """The synthetic MoE at Q4_K_M, written once into the cache."""
    quantized = CACHE / "bench-moe-Q4_K_M.gguf"
    if quantized.is_file():
        return quantized
    CACHE.mkdir(parents=True, exist_ok=True)
    source = CACHE / "bench-moe-F32.gguf"
    write_tiny_moe(source, SHAPE, never_ends=True, chat_template=TEMPLATE)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = 15, threads  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    partial = quantized.with_suffix(".part")
    if llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), ctypes.byref(params)) != 0:
        raise SystemExit("llama_model_quantize failed")
    partial.rename(quantized)
    source.unlink()
    return quantized


def _rates(url: str) -> tuple[float, float]:
    """Median prompt tokens/s (a ~500-token prompt, one token out) and decode tokens/s."""
    model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
    warm_up = {"model": model, "prompt": "the", "max_tokens": 4}  # first-use allocations are not measured
    httpx.post(f"{url}/v1/completions", json=warm_up, timeout=600).raise_for_status()
    prompt_rates, decode_rates = [], []
    for run in range(RUNS):
        body = {"model": model, "prompt": f"{run} {PROMPT}", "max_tokens": 1, "temperature": 0}
        started = time.perf_counter()
        usage = httpx.post(f"{url}/v1/completions", json=body, timeout=600).json()["usage"]
        prompt_rates.append(usage["prompt_tokens"] / (time.perf_counter() - started))
        body = {"model": model, "prompt": f"{run} the", "max_tokens": DECODE_TOKENS, "temperature": 0}
        started = time.perf_counter()
        usage = httpx.post(f"{url}/v1/completions", json=body, timeout=600).json()["usage"]
        decode_rates.append(usage["completion_tokens"] / (time.perf_counter() - started))
    return statistics.median(prompt_rates), statistics.median(decode_rates)


def measure(gguf: Path, name: str, flags: list[str], threads: int, logs: Path) -> dict:
    log = logs / f"offload-{re.sub(r'[^a-z]+', '-', name.lower()).strip('-')}.log"
    server = Server(["--model", str(gguf), "--threads", str(threads), "--parallel", "1", "--ctx-size", "2048",
                     "--log-level", "debug", *flags], {}, log)
    try:
        prompt_tps, decode_tps = _rates(server.url)
    finally:
        server.stop()
    placement = [m.group(0) for m in map(PLACEMENT_LINES.search, log.read_text().splitlines()) if m]
    return {"name": name, "flags": " ".join(flags), "prompt_tps": prompt_tps, "decode_tps": decode_tps,
            "placement": placement}


def write_report(out: Path, gguf: Path, vram: float, threads: int, rows: list[dict]) -> None:
    cpu = rows[0]
    lines = ["# A MoE model that does not fit: auto layers vs --cpu-moe", "",
             f"`bench/offload_bench.py`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()}, "
             f"{os.cpu_count()} cores, {threads} threads, load average {os.getloadavg()[0]:.1f} at the end.",
             f"Model `{gguf.name}` ({gguf.stat().st_size / 1e9:.2f} GB); the plan may use {vram:.2f} GB of GPU "
             f"memory. Prompt: ~500 tokens, 1 out; decode: {DECODE_TOKENS} tokens; median of {RUNS}.", "",
             "| placement | flags | prompt tok/s | decode tok/s | decode vs CPU only |", "| --- | --- | --- | --- | --- |"]
    for row in rows:
        lines.append(f"| {row['name']} | `{row['flags']}` | {row['prompt_tps']:.0f} | {row['decode_tps']:.1f} "
                     f"| {row['decode_tps'] / cpu['decode_tps']:.2f}x |")
    lines += ["", "What llama.cpp reported while loading:", ""]
    for row in rows:
        lines += [f"- {row['name']}:"] + [f"  - `{line}`" for line in row["placement"]]
    (out / "offload.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, default=None, help="model (default: the synthetic MoE)")
    parser.add_argument("--vram", type=float, default=None,
                        help="GB of GPU memory for the plan (default: half the file plus its driver margin)")
    parser.add_argument("--serve-args", default="", help="more `edge serve` flags for every placement")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--reports", type=Path, default=REPO / "bench" / "reports")
    args = parser.parse_args()
    gguf = args.gguf or synthetic_model(args.threads)
    vram = args.vram if args.vram is not None else (gguf.stat().st_size / 2 + Machine().gpu_margin) / 1e9
    capped = ["--n-gpu-layers", "auto", "--vram", f"{vram:.3f}"]
    placements = [("CPU only", ["--n-gpu-layers", "0"]),
                  ("Auto layers", capped),
                  ("Auto + cpu-moe", [*capped, "--cpu-moe"]),
                  ("All on GPU (no cap)", ["--n-gpu-layers", "-1"])]
    args.reports.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, flags in placements:
        print(f"measuring: {name}", file=sys.stderr)
        rows.append(measure(gguf, name, [*flags, *args.serve_args.split()], args.threads, args.reports))
    write_report(args.reports, gguf, vram, args.threads, rows)
    print((args.reports / "offload.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
