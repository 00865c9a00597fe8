"""Speculative decoding: decode tokens/s with and without it, edge against llama-server.

Two tasks on the embedded model (or --gguf): an edit task, a raw completion whose prompt is a
text given twice, which the model then reproduces (what an edit of a long document or a rename in
code asks of a model: most of the answer is already in the prompt), and open chat, where drafts
rarely match. Each runs at 1 and at 4 clients; every server reads each prompt once before the
timed requests, so both have it cached and the figure is the decode. Figures are medians over
--rounds interleaved rounds; each server's acceptance rate is kept / drafted tokens (edge from
/metrics, llama-server from its response timings). Writes bench/reports/speculative.md.

Two models by default: the embedded Q4_1 file and its Q4_0 requantization. Drafting pays only where
a step of several tokens costs little more than a step of one (a memory-bound model: a big one, or a
GPU); a 135M model on a few cores is compute-bound, and how much so depends on the kernels of its
quant type. So each model's section starts with that cost, measured in this process before its
servers start, and the speedup it caps: (1 + draft_max) / cost, were every draft kept.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import llama_cpp
from cpu_kernels_bench import QUANTS, requantized
from servers import LLAMA_SERVER, Failure, RunningServer, ServerFailed, Settings, edge_kernels
from report import machine
from step_profile import samples

from convert.gguf_edit import first_blocks
from edge.engine.batch import BatchWriter, decode_prompt, filler_tokens
from edge.engine.config import EngineConfig, context_params
from edge.engine.llama_model import LlamaModel, LoadOptions
from edge.engine.speculative import SpeculativeConfig

REPORTS = Path(__file__).resolve().parent / "reports"
CLIENTS = (1, 4)
DRAFT_BLOCKS = 24  # the first-blocks draft model keeps this many of the model's blocks
DRAFTS = Path.home() / ".cache" / "edge-bench" / "drafts"
DRAFT_MAX = SpeculativeConfig().draft_max  # edge's default, which every edge variant runs with
CONTEXT = 300  # tokens in the sequence before the steps verify_cost times (about an edit prompt's)


def variants(gguf: Path, draft: Path, kernel: str | None) -> dict[str, tuple[str, tuple[str, ...]]]:
    """name -> (server program, extra flags); a variant's baseline is the first word of its name.

    llama-server runs with the CPU kernels edge decided on (`kernel`): its --no-repack where edge
    runs plain, so that both read the weights through the same kernels (and llama-server's default,
    on a machine whose AMX kernels fault, would crash at start)."""
    kernels = ("--no-repack",) if kernel == "plain" else ()
    every = {
        "edge": ("edge", ()),
        "edge ngram": ("edge", ("--speculative", "ngram")),
        "edge ngram, policy always": ("edge", ("--speculative", "ngram", "--draft-policy", "always")),
        "edge self-draft": ("edge", ("--draft-model", str(gguf))),
        f"edge draft first-{DRAFT_BLOCKS}": ("edge", ("--draft-model", str(draft))),
        "llama-server": ("llama-server", ()),
        "llama-server ngram-simple": ("llama-server", ("--spec-type", "ngram-simple")),
        "llama-server self-draft": ("llama-server", ("--model-draft", str(gguf))),
        f"llama-server draft first-{DRAFT_BLOCKS}": ("llama-server", ("--model-draft", str(draft))),
    }
    return {name: (program, (*kernels, *extra) if program == "llama-server" else extra)
            for name, (program, extra) in every.items()}


def first_blocks_draft(gguf: Path) -> Path:
    """The model's first DRAFT_BLOCKS blocks as a draft model (built once, kept in DRAFTS)."""
    path = DRAFTS / f"{gguf.stem}-first-{DRAFT_BLOCKS}.gguf"
    if not path.is_file():
        DRAFTS.mkdir(parents=True, exist_ok=True)
        first_blocks(gguf, path.with_suffix(".part"), DRAFT_BLOCKS).rename(path)
    return path


def verify_cost(gguf: Path, kernel: str | None, threads: int, drafts: int = DRAFT_MAX, rounds: int = 7) -> float:
    """How many one-token steps one step of a token and `drafts` drafts costs: one sequence, every
    token's logits (verification reads them all), after CONTEXT tokens; median of `rounds` pairs.
    Drafting can raise decode tokens/s at most (1 + drafts) / this, and only if every draft is kept."""
    model = LlamaModel(gguf, LoadOptions(cpu_kernels=kernel or "plain"))
    params = context_params(EngineConfig(CONTEXT + drafts + 1, parallel=1, threads=threads))
    ctx = llama_cpp.llama_init_from_model(model.ptr, params)
    if not ctx:
        model.close()
        raise SystemExit(f"llama.cpp could not create a context for {gguf}")
    batch = llama_cpp.llama_batch_init(params.n_batch, 0, 1)
    tokens = filler_tokens(model.n_vocab, CONTEXT + drafts + 1)
    try:
        if decode_prompt(ctx, batch, params.n_batch, tokens[:CONTEXT]) != 0:
            raise SystemExit(f"llama.cpp could not decode with {gguf}")
        ratios = []
        for _ in range(rounds):
            one = _step_seconds(ctx, batch, tokens[CONTEXT:CONTEXT + 1])
            ratios.append(_step_seconds(ctx, batch, tokens[CONTEXT:]) / one)
        return statistics.median(ratios)
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)
        model.close()


def _step_seconds(ctx: llama_cpp.llama_context_p, batch: llama_cpp.llama_batch, tokens: list[int]) -> float:
    """One decode of `tokens` at CONTEXT..., all with logits; their cells are removed after."""
    writer = BatchWriter(batch, len(tokens))
    for offset, token in enumerate(tokens):
        writer.add(token, CONTEXT + offset, [0], True)
    started = time.perf_counter()
    status = llama_cpp.llama_decode(ctx, batch)
    seconds = time.perf_counter() - started
    llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(ctx), 0, CONTEXT, -1)
    if status != 0:
        raise SystemExit(f"llama_decode failed with status {status}")
    return seconds


TEXTS = [
    "The committee met on a grey Tuesday to review the harbour plan. The engineers proposed a longer "
    "breakwater, two new cranes and a rail spur to the northern quay, and the treasurer read out the "
    "costs line by line. After a long debate the members agreed to fund the cranes first, to ask the "
    "port authority for a second survey of the seabed, and to meet again in the spring.",
    "def load_orders(path):\n    orders = []\n    with open(path) as handle:\n        for line in handle:\n"
    "            order_id, customer, amount = line.strip().split(',')\n            orders.append({'id': "
    "order_id, 'customer': customer, 'amount': float(amount)})\n    return orders\n\n\ndef total(orders):\n"
    "    return sum(order['amount'] for order in orders)\n",
    '{"name": "Ada", "role": "engineer", "team": "storage", "projects": ["cache", "replication", '
    '"backup"], "office": "Lisbon", "languages": ["Portuguese", "English"], "start": "2021-04-01", '
    '"manager": "Grace", "level": 4, "remote": false}',
    "Once upon a time a lighthouse keeper kept a journal of every ship that passed. Each night he wrote "
    "the ship's name, its flag, the hour and the weather, and each morning he read the last page aloud "
    "to his cat, who listened without a word and then went back to sleep by the stove.",
]
TOPICS = ["a lighthouse", "a chess club", "a desert train", "a mountain bakery"]


def edit_prompt(index: int) -> dict:
    text = TEXTS[index % len(TEXTS)]
    return {"route": "completions", "body": {"prompt": f"{text}\n\n{text}\n\n"}}


def chat_prompt(index: int) -> dict:
    topic = TOPICS[index % len(TOPICS)]
    return {"route": "chat/completions",
            "body": {"messages": [{"role": "user", "content": f"Write a short story about {topic}."}]}}


TASKS = {"edit": edit_prompt, "open chat": chat_prompt}


def request(server: RunningServer, prompt: dict, max_tokens: int) -> dict:
    body = {"model": server.model, **prompt["body"], "max_tokens": max_tokens, "temperature": 0}
    started = time.perf_counter()
    response = httpx.post(f"{server.url}/v1/{prompt['route']}", json=body, timeout=900)
    response.raise_for_status()
    reply = response.json()
    timings = reply.get("timings") or {}
    return {"seconds": time.perf_counter() - started, "tokens": reply["usage"]["completion_tokens"],
            "drafted": timings.get("draft_n", 0), "accepted": timings.get("draft_n_accepted", 0)}


def edge_drafts(server: RunningServer) -> tuple[float, float]:
    """edge's drafted and kept token counters now."""
    values = {sample.name: sample.value for sample in samples(server.url)}
    return (values.get("edge_speculative_drafted_tokens_total", 0.0),
            values.get("edge_speculative_accepted_tokens_total", 0.0))


def measure(server: RunningServer, task: str, clients: int, max_tokens: int) -> dict:
    """Aggregate decode tokens/s of `clients` concurrent requests, each prompt read once before."""
    prompts = [TASKS[task](index) for index in range(clients)]
    for prompt in prompts:
        request(server, prompt, 1)  # the prompt into the cache
    before = edge_drafts(server) if server.name == "edge" else (0.0, 0.0)
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        replies = list(pool.map(lambda prompt: request(server, prompt, max_tokens), prompts))
    seconds = time.perf_counter() - started
    if server.name == "edge":
        after = edge_drafts(server)
        drafted, accepted = after[0] - before[0], after[1] - before[1]
    else:
        drafted, accepted = sum(r["drafted"] for r in replies), sum(r["accepted"] for r in replies)
    tokens = sum(r["tokens"] for r in replies)
    return {"tps": tokens / seconds, "tokens": tokens, "acceptance": accepted / drafted if drafted else None}


def run(chosen: dict[str, tuple[str, tuple[str, ...]]], settings: Settings, rounds: int, max_tokens: int,
        logs: Path, failures: dict[str, Failure]) -> dict:
    """Figures by variant and task|clients; a variant that fails to start is recorded in `failures`
    and left out of the later rounds."""
    results: dict = {name: {} for name in chosen}
    for round_index in range(rounds):
        for name, (program, extra) in chosen.items():  # interleaved: each round runs every variant once
            if name in failures:
                continue
            try:
                server = RunningServer(program, settings, logs, extra, log_name=f"spec-{settings.gguf.stem}-{name.replace(' ', '-')}")
            except ServerFailed as error:
                failures[name] = error.failure
                print(f"round {round_index + 1} {name}: {error}", file=sys.stderr, flush=True)
                continue
            try:
                for task in TASKS:
                    for clients in CLIENTS:
                        figure = measure(server, task, clients, max_tokens)
                        results[name].setdefault(f"{task}|{clients}", []).append(figure)
                        print(f"round {round_index + 1} {name} {task} x{clients}: {figure['tps']:.1f} tok/s, "
                              f"acceptance {figure['acceptance']}", file=sys.stderr, flush=True)
            finally:
                server.stop()
    return results


def _median(figures: list[dict], key: str) -> float | None:
    values = [f[key] for f in figures if f[key] is not None]
    return statistics.median(values) if values else None


@dataclass
class ModelRun:
    """One model's figures: its servers' results by variant, and what framed them."""

    name: str  # the quant type, or the file's name
    settings: Settings
    kernel_line: str  # edge's CPU-kernel decision, as it logs it
    cost: float  # verify_cost: a step of 1 + DRAFT_MAX tokens, in one-token steps
    results: dict
    failures: dict[str, Failure]


def write_report(path: Path, runs: list[ModelRun], rounds: int, max_tokens: int) -> None:
    settings = runs[0].settings
    lines = ["# Speculative decoding", "",
             f"Machine: {machine()}. {settings.parallel} slots, {settings.threads} threads, {max_tokens} tokens per "
             f"request, temperature 0, edge's default --draft-max {DRAFT_MAX}; medians of {rounds} interleaved rounds. "
             "Decode tokens/s is the aggregate over the clients, prompts already cached. `make bench-spec` wrote this.",
             "", "Drafting pays where verifying several tokens in one step costs little more than one token "
             "(a memory-bound model). Each section gives, measured before its servers started, what one step of "
             f"a token and {DRAFT_MAX} drafts costs in one-token steps (one sequence, {CONTEXT} tokens of context) "
             "and the speedup that caps at 1 client, reached only if every draft were kept."]
    for run_ in runs:
        lines += _model_section(run_)
    lines += ["", "Draft models: self-draft is the model drafting for itself (every draft costs a target-sized "
              f"decode: an upper bound on acceptance, not a speedup); first-{DRAFT_BLOCKS} is its first {DRAFT_BLOCKS} "
              "blocks and output head (convert/gguf_edit.first_blocks), an untrained stand-in for a smaller sibling "
              "model. edge's policy is auto (the default: drafts only what its step cost model expects to pay) unless "
              "a row says always."]
    path.write_text("\n".join(lines) + "\n")


def _model_section(run_: ModelRun) -> list[str]:
    ceiling = (1 + DRAFT_MAX) / run_.cost
    lines = ["", f"## {run_.name} ({run_.settings.gguf.name})", "",
             f"A step of 1 + {DRAFT_MAX} tokens costs {run_.cost:.1f} one-token steps: at most {ceiling:.2f}x at 1 client. "
             f"edge's `{run_.kernel_line}`; llama-server runs with the matching kernels (its --no-repack where edge "
             "runs plain).", "", "| task | clients | server | tokens/s | speedup vs its baseline | acceptance |",
             "|---|---|---|---|---|---|"]
    results = run_.results
    for task in TASKS:
        for clients in CLIENTS:
            key = f"{task}|{clients}"
            for name, by_key in results.items():
                if not by_key.get(key):
                    continue  # it failed at its first start: listed below the table
                tps = _median(by_key[key], "tps")
                base = name.split()[0]
                base_tps = _median(results[base].get(key, []), "tps") if base in results else None
                speedup = f"{tps / base_tps:.2f}x" if base != name and base_tps else ""
                acceptance = _median(by_key[key], "acceptance")
                rate = f"{acceptance:.0%}" if acceptance is not None else ""
                lines.append(f"| {task} | {clients} | {name} | {tps:.1f} | {speedup} | {rate} |")
    if run_.failures:
        lines += [""] + [f"- {name} {failure.sentence()}; it was left out of the later rounds." for name, failure in
                         run_.failures.items()]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quants", default="Q4_1,Q4_0",
                        help=f"the embedded model (Q4_1) and requantizations of it: {', '.join(QUANTS)}")
    parser.add_argument("--gguf", type=Path, default=None, help="one model file instead of --quants")
    parser.add_argument("--reports", type=Path, default=REPORTS)
    args = parser.parse_args()
    if args.gguf is not None:
        models = {args.gguf.stem: args.gguf}
    else:
        unknown = [quant for quant in args.quants.split(",") if quant not in QUANTS]
        if unknown:
            parser.error(f"--quants: unknown {', '.join(unknown)} (known: {', '.join(QUANTS)})")
        models = {quant: requantized(quant) for quant in args.quants.split(",")}
    args.reports.mkdir(parents=True, exist_ok=True)
    runs = [measure_model(name, gguf, args) for name, gguf in models.items()]
    write_report(args.reports / "speculative.md", runs, args.rounds, args.max_tokens)
    print(f"wrote {args.reports / 'speculative.md'}", file=sys.stderr)
    return 0


def measure_model(name: str, gguf: Path, args: argparse.Namespace) -> ModelRun:
    """Every variant's figures on `gguf`, after its verify cost (measured while no server runs)."""
    settings = Settings(gguf, max(CLIENTS), 2048, args.threads)
    kernel, kernel_line = edge_kernels(settings)
    cost = verify_cost(gguf, kernel, args.threads)
    print(f"{name}: {kernel_line}; a step of 1 + {DRAFT_MAX} tokens costs {cost:.1f} one-token steps", file=sys.stderr)
    every = variants(gguf, first_blocks_draft(gguf), kernel)
    chosen = {variant: spec for variant, spec in every.items() if spec[0] == "edge" or LLAMA_SERVER.exists()}
    if len(chosen) < len(every):
        print("llama-server is not built (make bench-tools): edge only", file=sys.stderr)
    failures: dict[str, Failure] = {}
    results = run(chosen, settings, args.rounds, args.max_tokens, args.reports, failures)
    return ModelRun(name, settings, kernel_line, cost, results, failures)


if __name__ == "__main__":
    sys.exit(main())
