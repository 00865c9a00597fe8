"""Serving benchmark: edge against llama.cpp's llama-server and llama-cpp-python's server.

Same GGUF (the embedded SmolLM2), slots, context per slot, threads and batch size for all three,
started one at a time on this machine. Writes bench/reports/serve.md, serve.json and PNG plots.

    make bench                       # or: .venv/bin/python bench/serve_bench.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_report  # noqa: E402
from servers import RunningServer, Settings, available  # noqa: E402

from edge.cards import DEFAULT_MODELS_DIR, resolve_model  # noqa: E402
from edge.engine.llama_model import LlamaModel  # noqa: E402

REPORTS = Path(__file__).resolve().parent / "reports"
SERVERS = ("edge", "llama-server", "llama-cpp-python")
COLORS = ["red", "blue", "green", "amber", "violet", "silver", "copper", "teal"]
THINGS = ["lamp", "kettle", "violin", "compass", "ladder", "teapot", "globe", "clock"]


def count_prompt(index: int) -> list[dict]:
    return [{"role": "user", "content": f"Request {index}. Count from 1 to 200, separated by commas."}]


def chat(server: RunningServer, messages: list[dict], max_tokens: int, **fields) -> dict:
    body = {"model": server.model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, **fields}
    started = time.perf_counter()
    response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=600)
    response.raise_for_status()
    reply = response.json()
    return {"seconds": time.perf_counter() - started, "tokens": reply["usage"]["completion_tokens"],
            "choices": len(reply["choices"]), "text": reply["choices"][0]["message"]["content"] or ""}


def stream_chat(server: RunningServer, messages: list[dict], max_tokens: int) -> dict:
    """TTFT (send to first content), decode rate (tokens after the first over their time), text."""
    body = {"model": server.model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    started = time.perf_counter()
    stamps, text = [], []
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[6:]).get("choices") or [{}]
            content = (choices[0].get("delta") or {}).get("content")
            if content:
                stamps.append(time.perf_counter())
                text.append(content)
    decode = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 and stamps[-1] > stamps[0] else 0.0
    return {"ttft": stamps[0] - started if stamps else float("nan"), "decode_tps": decode,
            "tokens": len(stamps), "text": "".join(text)}


def single_client(server: RunningServer, runs: int, max_tokens: int) -> dict:
    results = [stream_chat(server, count_prompt(1000 + i), max_tokens) for i in range(runs)]
    return {"ttft_s": statistics.median(r["ttft"] for r in results),
            "decode_tps": statistics.median(r["decode_tps"] for r in results),
            "tokens": [r["tokens"] for r in results]}


def concurrent_clients(server: RunningServer, clients: int, per_client: int, max_tokens: int) -> dict:
    def client(c: int) -> list[dict]:
        return [chat(server, count_prompt(100 * clients + 10 * c + r), max_tokens) for r in range(per_client)]

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


def conversation(server: RunningServer, model: LlamaModel, trials: int, target_tokens: int) -> dict:
    firsts, seconds, sizes = [], [], []
    for trial in range(trials):
        text, size = document(trial + 1, model, target_tokens)
        turn = [{"role": "user", "content": f"{text}\n\nWhich room holds item {1000 * (trial + 1) + 5}?"}]
        first = stream_chat(server, turn, 32)
        history = [*turn, {"role": "assistant", "content": first["text"]},
                   {"role": "user", "content": "And which shelf is it on?"}]
        second = stream_chat(server, history, 32)
        firsts.append(first["ttft"])
        seconds.append(second["ttft"])
        sizes.append(size)
    return {"document_tokens": sizes, "first_ttft_s": statistics.median(firsts),
            "second_ttft_s": statistics.median(seconds),
            "ratio": statistics.median(seconds) / statistics.median(firsts)}


def n2_vs_n1(server: RunningServer, repeats: int, max_tokens: int) -> dict:
    def timed(n: int, index: int) -> dict:
        return chat(server, count_prompt(5000 + 10 * index + n), max_tokens, n=n, seed=3, temperature=0.7)

    one = [timed(1, i) for i in range(repeats)]
    two = [timed(2, i) for i in range(repeats)]
    return {"n1_s": statistics.median(r["seconds"] for r in one), "n2_s": statistics.median(r["seconds"] for r in two),
            "n1_tokens": [r["tokens"] for r in one], "n2_tokens": [r["tokens"] for r in two],
            "n2_choices": two[0]["choices"],
            "ratio": statistics.median(r["seconds"] for r in two) / statistics.median(r["seconds"] for r in one)}


def _percentile(values: list[float], percent: float) -> float:
    rank = (len(values) - 1) * percent / 100
    low, high = int(rank), min(int(rank) + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (rank - low)


def measure(name: str, settings: Settings, model: LlamaModel, quick: bool) -> dict:
    server = RunningServer(name, settings, REPORTS)
    try:
        chat(server, count_prompt(0), 8)  # warm-up: first-use allocations are not what we measure
        scale = 1 if quick else 2
        result = {"single": single_client(server, 2 * scale + 1, 64 * scale)}
        result["concurrency"] = [concurrent_clients(server, c, scale, 48 * scale) for c in (1, 4, 8)]
        result["conversation"] = conversation(server, model, scale, 1500)
        result["n2"] = n2_vs_n1(server, scale + 1, 64)
        return result
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer and shorter requests")
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--servers", default=",".join(SERVERS))
    args = parser.parse_args()
    gguf, _ = resolve_model(None, DEFAULT_MODELS_DIR)
    settings = Settings(gguf, args.parallel, 2048, args.threads)
    REPORTS.mkdir(exist_ok=True)
    model = LlamaModel(gguf)
    results, load = {}, {"before": _load()}
    for name in args.servers.split(","):
        if not available(name):
            print(f"skipping {name}: not built (make bench-tools)", file=sys.stderr)
            continue
        print(f"measuring {name} ...", file=sys.stderr)
        results[name] = measure(name, settings, model, args.quick)
    load["after"] = _load()
    (REPORTS / "serve.json").write_text(json.dumps({"settings": vars(args), "load": load, "results": results}, indent=1))
    write_report(REPORTS, settings, results, load)
    print(f"wrote {REPORTS / 'serve.md'}", file=sys.stderr)
    return 0


def _load() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


if __name__ == "__main__":
    sys.exit(main())
