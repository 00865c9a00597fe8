"""Serving benchmark: edge against llama.cpp's llama-server and llama-cpp-python's server.

Same GGUF (the embedded SmolLM2), slots, context per slot, threads and batch size for all of them,
on this machine. llama-server runs twice, with its defaults and with --no-repack; edge's ratios
are taken against the one whose CPU kernels match edge's own decision (report.matching_llama_servers).
A server that crashes is reported as such and the others are still measured.
Writes bench/reports/serve.md, serve.json and PNG plots.

    make bench                       # or: .venv/bin/python bench/serve_bench.py [--quick]

On a GPU build, `--gpu-layers -1 --gguf FILE --reports DIR` measures the same on the GPU (a model
other than the embedded one needs a chat template for the conversation phase).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import RunContext, run_stamp, write_report  # noqa: E402
from step_profile import breakdown, samples, snapshot  # noqa: E402
from servers import (SERVERS, Failure, RunningServer, ServerFailed, Settings, available, edge_kernels,  # noqa: E402
                     llama_server_amx)

from edge.cards import DEFAULT_MODELS_DIR, resolve_model  # noqa: E402
from edge.engine.llama_model import LlamaModel  # noqa: E402

REPORTS = Path(__file__).resolve().parent / "reports"
T = TypeVar("T")
COLORS = ["red", "blue", "green", "amber", "violet", "silver", "copper", "teal"]
THINGS = ["lamp", "kettle", "violin", "compass", "ladder", "teapot", "globe", "clock"]


def count_prompt(index: int) -> str:
    """A raw completion prompt that this model continues at temperature 0 for as long as allowed,
    so every server generates exactly max_tokens (no server can be asked to ignore EOS the same way)."""
    return f"Request {index}: " + ", ".join(str(k) for k in range(1, 11)) + ","


def complete(server: RunningServer, prompt: str, max_tokens: int, **fields) -> dict:
    body = {"model": server.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **fields}
    started = time.perf_counter()
    response = httpx.post(f"{server.url}/v1/completions", json=body, timeout=900)
    response.raise_for_status()
    reply = response.json()
    return {"seconds": time.perf_counter() - started, "tokens": reply["usage"]["completion_tokens"],
            "choices": len(reply["choices"])}


def stream(server: RunningServer, route: str, payload: dict, max_tokens: int) -> dict:
    """TTFT (send to first content), decode rate (tokens after the first over their time), text."""
    body = {"model": server.model, **payload, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    started = time.perf_counter()
    stamps, text, timings = [], [], {}
    with httpx.stream("POST", f"{server.url}/v1/{route}", json=body, timeout=900) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            timings = chunk.get("timings") or timings  # llama-server's own: cache_n, prompt_n
            choice = (chunk.get("choices") or [{}])[0]
            content = (choice.get("delta") or {}).get("content") or choice.get("text")
            if content:
                stamps.append(time.perf_counter())
                text.append(content)
    decode = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 and stamps[-1] > stamps[0] else 0.0
    return {"ttft": stamps[0] - started if stamps else float("nan"), "decode_tps": decode,
            "tokens": len(stamps), "text": "".join(text), "timings": timings}


def stream_chat(server: RunningServer, messages: list[dict], max_tokens: int) -> dict:
    return stream(server, "chat/completions", {"messages": messages}, max_tokens)


def single_client(server: RunningServer, salt: int, runs: int, max_tokens: int) -> dict:
    results = [stream(server, "completions", {"prompt": count_prompt(salt + i)}, max_tokens) for i in range(runs)]
    return {"ttft_s": statistics.median(r["ttft"] for r in results),
            "decode_tps": statistics.median(r["decode_tps"] for r in results),
            "tokens": [r["tokens"] for r in results]}


def concurrent_clients(server: RunningServer, salt: int, clients: int, per_client: int, max_tokens: int) -> dict:
    def client(c: int) -> list[dict]:
        return [complete(server, count_prompt(salt + 100 * clients + 10 * c + r), max_tokens)
                for r in range(per_client)]

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [r for batch in pool.map(client, range(clients)) for r in batch]
    wall = time.perf_counter() - started
    latencies = sorted(r["seconds"] for r in results)
    return {"clients": clients, "requests": len(results), "tokens": sum(r["tokens"] for r in results),
            "wall_s": wall, "aggregate_tps": sum(r["tokens"] for r in results) / wall,
            "p50_s": _percentile(latencies, 50), "p95_s": _percentile(latencies, 95)}


def document(seed: int, model: LlamaModel, target_tokens: int) -> tuple[str, int]:
    """A made-up inventory of about `target_tokens` tokens, different for every seed."""
    lines, count = [], 0
    k = 0
    while count < target_tokens:
        k += 1
        lines.append(f"Item {k + 1000 * seed} is a {COLORS[(k * 3 + seed) % 8]} {THINGS[(k + seed) % 8]} "
                     f"kept on shelf {k % 13} of room {(k * 7 + seed) % 11}.")
        count = len(model.tokenize("\n".join(lines), add_special=False))
    return "\n".join(lines), count


def conversation(server: RunningServer, model: LlamaModel, seed: int, target_tokens: int) -> dict:
    text, size = document(seed, model, target_tokens)
    turn = [{"role": "user", "content": f"{text}\n\nWhich room holds item {1000 * seed + 5}?"}]
    first = chat_turn(server, turn)
    history = [*turn, {"role": "assistant", "content": first["text"]},
               {"role": "user", "content": "And which shelf is it on?"}]
    second = chat_turn(server, history)
    return {"document_tokens": size, "first_ttft_s": first["ttft"], "second_ttft_s": second["ttft"],
            "first_reused": first["reused"], "first_evaluated": first["evaluated"],
            "second_reused": second["reused"], "second_evaluated": second["evaluated"]}


def chat_turn(server: RunningServer, messages: list[dict]) -> dict:
    """One streamed turn, with the prompt tokens found in the cache (`reused`) and those evaluated:
    edge's from its metrics, llama-server's from its `timings`; None where a server says neither."""
    counters = ("edge_prompt_tokens_total", "edge_prefix_cache_hit_tokens_total")
    before = _metrics(server, counters) if server.name == "edge" else None
    result = stream_chat(server, messages, 32)
    reused = evaluated = None
    if before is not None:
        prompt, hits = (after - was for after, was in zip(_metrics(server, counters), before))
        reused, evaluated = hits, prompt - hits
    elif "prompt_n" in result["timings"]:
        reused, evaluated = result["timings"].get("cache_n"), result["timings"]["prompt_n"]
    return {**result, "reused": reused, "evaluated": evaluated}


def _metrics(server: RunningServer, names: tuple[str, ...]) -> list[float]:
    values = {sample.name: sample.value for sample in samples(server.url)}
    return [values.get(name, 0.0) for name in names]


def n2_vs_n1(server: RunningServer, salt: int, max_tokens: int) -> dict:
    """Greedy, so that both choices and the single one run the full max_tokens."""
    one = complete(server, count_prompt(salt + 1), max_tokens, n=1)
    two = complete(server, count_prompt(salt + 2), max_tokens, n=2)
    return {"n1_s": one["seconds"], "n2_s": two["seconds"], "n1_tokens": one["tokens"], "n2_tokens": two["tokens"],
            "n2_choices": two["choices"]}


def _percentile(values: list[float], percent: float) -> float:
    rank = (len(values) - 1) * percent / 100
    low, high = int(rank), min(int(rank) + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (rank - low)


PHASES = ("single", "concurrency", "conversation", "n2")
PHASE_TITLES = {"single": "single-client", "concurrency": "concurrency", "conversation": "conversation", "n2": "n=2"}


def profiled(server: RunningServer, action: Callable[..., dict], *args) -> dict:
    """`action(*args)`'s figures; on edge, with its engine's step profile over the action."""
    if server.name != "edge":
        return action(*args)
    before = snapshot(server.url)
    figures = action(*args)
    return {**figures, "profile": breakdown(before, snapshot(server.url))}


def run_phase(phase: str, server: RunningServer, model: LlamaModel, salt: int, quick: bool):
    tokens = 32 if quick else 64
    if phase == "single":
        return profiled(server, single_client, server, salt, 3, tokens * 2)
    if phase == "concurrency":
        return [profiled(server, concurrent_clients, server, salt, c, 1, tokens) for c in (1, 4, 8)]
    if phase == "conversation":
        return conversation(server, model, salt // 10000, 1500)
    return n2_vs_n1(server, salt, tokens)


def summarize(rounds: list[dict]) -> dict:
    """Medians over the rounds, in the shape report.py reads; the rounds themselves are kept."""
    med = statistics.median
    single = [r["single"] for r in rounds]
    conv = [r["conversation"] for r in rounds]
    n2 = [r["n2"] for r in rounds]
    concurrency = []
    for index in range(3):
        rows = [r["concurrency"][index] for r in rounds]
        concurrency.append({key: _median_profile(rows) if key == "profile" else med(row[key] for row in rows)
                            for key in rows[0]})
    first, second = med(c["first_ttft_s"] for c in conv), med(c["second_ttft_s"] for c in conv)
    n1_s, n2_s = med(x["n1_s"] for x in n2), med(x["n2_s"] for x in n2)
    single_figures = {"ttft_s": med(x["ttft_s"] for x in single), "decode_tps": med(x["decode_tps"] for x in single)}
    if "profile" in single[0]:
        single_figures["profile"] = _median_profile(single)
    return {"single": single_figures,
            "concurrency": concurrency,
            "conversation": {"first_ttft_s": first, "second_ttft_s": second, "ratio": second / first,
                             **_reuse_medians(conv)},
            "n2": {"n1_s": n1_s, "n2_s": n2_s, "ratio": n2_s / n1_s, "n2_choices": n2[0]["n2_choices"]},
            "rounds": rounds}


def _reuse_medians(conv: list[dict]) -> dict:
    """Prompt tokens reused and evaluated on each turn, medians over the rounds (None: not known)."""
    keys = ("first_reused", "first_evaluated", "second_reused", "second_evaluated")
    known = {key: [c[key] for c in conv if c.get(key) is not None] for key in keys}
    return {key: statistics.median(values) if values else None for key, values in known.items()}


def _median_profile(rows: list[dict]) -> dict | None:
    """Each step-profile figure's median over the rounds that have one."""
    profiles = [row["profile"] for row in rows if row.get("profile")]
    if not profiles:
        return None
    return {key: statistics.median(p[key] for p in profiles) for key in profiles[0]}


def measure_all(names: list[str], settings: Settings, model: LlamaModel, rounds: int, quick: bool,
                reports: Path) -> tuple[dict, dict[str, Failure]]:
    """All servers up at once (idle ones cost nothing), each phase run on each server in turn,
    rotating the order every round, so that the machine's changing load hits all alike.
    A server that crashes or fails drops out with its Failure; the others go on."""
    servers: dict[str, RunningServer] = {}
    failures: dict[str, Failure] = {}
    try:
        for name in names:
            server = _start(name, settings, reports, failures)
            if server:
                servers[name] = server
        measured = {name: [{} for _ in range(rounds)] for name in servers}
        for round_index in range(rounds):
            for phase_index, phase in enumerate(PHASES):
                active = [name for name in names if name in servers and name not in failures]
                shift = round_index % len(active) if active else 0
                salt = 10000 * (round_index + 1) + 1000 * phase_index
                for name in active[shift:] + active[:shift]:
                    print(f"round {round_index + 1}: {phase} on {name}", file=sys.stderr)
                    where = f"round {round_index + 1}, {PHASE_TITLES[phase]} phase"
                    figures = _attempt(servers[name], where, failures, run_phase, phase, servers[name], model, salt, quick)
                    measured[name][round_index][phase] = figures
        # A server that failed part-way has figures for some rounds only: none of them are kept.
        return {name: summarize(measured[name]) for name in servers if name not in failures}, failures
    finally:
        for server in servers.values():
            server.stop()


def _start(name: str, settings: Settings, reports: Path, failures: dict[str, Failure]) -> RunningServer | None:
    """The server, started and warmed up (first-use allocations are not measured); None, with its
    Failure recorded, when it does not survive that."""
    try:
        server = RunningServer(name, settings, reports)
    except ServerFailed as error:
        _record(name, error.failure, failures)
        return None
    _attempt(server, "first request", failures, complete, server, count_prompt(0), 8)
    return None if name in failures else server


def _attempt(server: RunningServer, phase: str, failures: dict[str, Failure], action: Callable[..., T], *args) -> T | None:
    """`action(*args)`; when a request to `server` breaks, its Failure is recorded, the server
    stopped, and None returned. Other errors are the benchmark's own and propagate."""
    try:
        return action(*args)
    except httpx.HTTPError as error:
        _record(server.name, server.failure(phase, error), failures)
        server.stop()
        return None


def _record(name: str, failure: Failure, failures: dict[str, Failure]) -> None:
    failures[name] = failure
    print(f"{name}: {failure.sentence()} ({failure.log_tail or 'no log output'}); measuring the others",
          file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer and shorter requests")
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from serve.json")
    parser.add_argument("--rounds", type=int, default=3, help="every figure is the median of this many rounds")
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--gguf", type=Path, default=None, help="model file (default: the embedded model)")
    parser.add_argument("--gpu-layers", type=int, default=0, help="layers on the GPU, -1 all (default 0)")
    parser.add_argument("--reports", type=Path, default=REPORTS, help=f"output folder (default {REPORTS})")
    args = parser.parse_args()
    gguf = args.gguf or resolve_model(None, DEFAULT_MODELS_DIR)[0]
    settings = Settings(gguf, args.parallel, 2048, args.threads, gpu_layers=args.gpu_layers)
    reports = args.reports
    reports.mkdir(parents=True, exist_ok=True)
    model = LlamaModel(gguf)
    if args.report_only:  # re-render serve.md and the plots from serve.json
        saved = json.loads((reports / "serve.json").read_text())
        write_report(reports, settings, saved["results"], saved["load"], RunContext.from_json(saved.get("context")))
        return 0
    names = [name for name in args.servers.split(",") if available(name)]
    for name in set(args.servers.split(",")) - set(names):
        print(f"skipping {name}: not built (make bench-tools)", file=sys.stderr)
    kernel, kernel_line = edge_kernels(settings)
    print(kernel_line, file=sys.stderr)
    amx, system_info = llama_server_amx() if any(n.startswith("llama-server") for n in names) else (None, "")
    load = {**run_stamp(), "before": _load()}
    results, failures = measure_all(names, settings, model, 1 if args.quick else args.rounds, args.quick, reports)
    load["after"] = _load()
    context = RunContext(kernel, kernel_line, amx, system_info, failures)
    saved_args = {**vars(args), "gguf": str(gguf), "reports": str(reports)}
    (reports / "serve.json").write_text(json.dumps({"settings": saved_args, "load": load, "context": context.to_json(),
                                                    "results": results}, indent=1))
    write_report(reports, settings, results, load, context)
    print(f"wrote {reports / 'serve.md'}", file=sys.stderr)
    return 0


def _load() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


if __name__ == "__main__":
    sys.exit(main())
