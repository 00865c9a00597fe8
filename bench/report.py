"""bench/reports/serve.md and its PNG plots, from the measured results."""

from __future__ import annotations

import os
import platform
import re
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from servers import SERVERS, Failure, label  # noqa: E402

from edge.plan.llama_build import installed_verdict  # noqa: E402

COLORS = {"edge": "tab:blue", "llama-server": "tab:orange", "llama-server-norepack": "tab:brown",
          "llama-server-isa": "tab:red", "llama-server-isa-norepack": "tab:purple", "llama-cpp-python": "tab:green"}
# Shorter names under the bars, where four long ones would overlap.
PLOT_LABELS = {"llama-server": "llama-server\n(default)", "llama-server-norepack": "llama-server\n--no-repack",
               "llama-server-isa": "llama-server\nISA build", "llama-server-isa-norepack": "llama-server ISA\n--no-repack"}
LLAMA_SERVERS = ("llama-server", "llama-server-norepack")


@dataclass(frozen=True)
class RunContext:
    """What the report says beside the figures: edge's CPU kernel decision, whether llama-server
    was built with AMX, and the servers that crashed or failed."""

    edge_kernel: str | None = None  # amx, repack or plain; None when undecided or unknown
    edge_kernel_line: str = ""  # edge's own `CPU kernels: ...` line
    llama_server_amx: bool | None = None  # None: its system info could not be read
    llama_server_system_info: str = ""
    failures: dict[str, Failure] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict | None) -> RunContext:
        """From serve.json's "context"; a serve.json written before it existed gives an empty one."""
        if not data:
            return cls()
        failures = {name: Failure(**fields) for name, fields in data.get("failures", {}).items()}
        return cls(**{**data, "failures": failures})


def matching_llama_servers(kernel: str | None, amx: bool | None) -> tuple[tuple[str, ...], str]:
    """The llama-server variants whose CPU kernels are edge's (`kernel`), and why: ratios against
    any other would measure the kernels, not the servers."""
    both = LLAMA_SERVERS
    if kernel == "plain":
        return ("llama-server-norepack",), ("edge runs plain kernels (llama.cpp's extra buffer types off), "
                                            "which is llama-server's `--no-repack`")
    if kernel == "amx":
        return ("llama-server",), "edge runs llama.cpp's default AMX kernels, which is llama-server's default"
    if kernel == "repack":
        if amx is False:
            return ("llama-server",), ("edge runs repacked weights without AMX; this llama-server build has no "
                                       "AMX kernels (no AMX_INT8 in its system info), so its default is the same")
        why = "it has AMX kernels" if amx else "whether it has AMX kernels could not be read"
        return both, ("edge runs repacked weights without AMX, which this llama-server build cannot be told to "
                      f"do ({why}): no exact match, so the ratios are given against both variants")
    return both, "edge's kernel decision is unknown: the ratios are given against both llama-server variants"


def _names(names: list[str]) -> list[str]:
    return [PLOT_LABELS.get(name, label(name)) for name in names]


def _bars(ax, names: list[str], values: list[float], title: str, unit: str) -> None:
    ax.bar(_names(names), values, color=[COLORS.get(n, "gray") for n in names])
    ax.set_title(title)
    ax.set_ylabel(unit)
    ax.tick_params(axis="x", labelsize=8)
    for index, value in enumerate(values):
        ax.annotate(f"{value:.3g}", (index, value), ha="center", va="bottom")


def _plots(out: Path, results: dict) -> list[str]:
    """The three PNGs, of the servers that were measured (a crashed one has no figures)."""
    names = list(results)
    if not names:
        return []
    files = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    _bars(axes[0], names, [results[n]["single"]["ttft_s"] * 1000 for n in names], "Single client: time to first token", "ms")
    _bars(axes[1], names, [results[n]["single"]["decode_tps"] for n in names], "Single client: decode rate", "tokens/s")
    files.append(_save(fig, out / "serve_single.png"))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name in names:
        rows = results[name]["concurrency"]
        clients = [row["clients"] for row in rows]
        color, text = COLORS.get(name), label(name)
        axes[0].plot(clients, [row["aggregate_tps"] for row in rows], "o-", label=text, color=color)
        axes[1].plot(clients, [row["p50_s"] for row in rows], "o-", label=f"{text} p50", color=color)
        axes[1].plot(clients, [row["p95_s"] for row in rows], "o--", label=f"{text} p95", color=color)
    axes[0].set(title="Aggregate completion tokens/s", xlabel="concurrent clients", ylabel="tokens/s")
    axes[1].set(title="Request latency", xlabel="concurrent clients", ylabel="s")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.set_xticks([1, 4, 8])
    files.append(_save(fig, out / "serve_concurrency.png"))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.38
    for index, name in enumerate(names):
        conv = results[name]["conversation"]
        axes[0].bar([index - width / 2], [conv["first_ttft_s"] * 1000], width, color="lightgray")
        axes[0].bar([index + width / 2], [conv["second_ttft_s"] * 1000], width, color=COLORS.get(name))
    axes[0].set_xticks(range(len(names)), _names(names))
    axes[0].tick_params(axis="x", labelsize=8)
    axes[0].set(title="~1500-token conversation: TTFT, turn 1 (gray) vs turn 2", ylabel="ms")
    _bars(axes[1], names, [results[n]["n2"]["ratio"] for n in names], "n=2 wall time / n=1 wall time", "ratio")
    files.append(_save(fig, out / "serve_conversation_n2.png"))
    return files


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path.name


def _ratio(results: dict, failures: dict[str, Failure], other: str, pick) -> str:
    """edge's figure over `other`'s, or why there is none."""
    for name in ("edge", other):
        if name in failures:
            return f"edge {failures[name].outcome}" if name == "edge" else failures[name].outcome
    if "edge" not in results or other not in results:
        return "n/a"
    theirs = pick(results[other])
    return f"{pick(results['edge']) / theirs:.2f}x" if theirs else "n/a"


def run_stamp() -> dict:
    """When and where a run starts, kept in serve.json so that --report-only re-renders it as it was."""
    return {"started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine()}


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    verdict = installed_verdict()  # which compiled llama.cpp edge ran: `make install` timed the builds
    build = verdict.line() if verdict else "llama.cpp build: not recorded (installed other than by make install)"
    return (f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, edge at {commit}; edge's {build}")


def _failure_note(name: str, failure: Failure, context: RunContext) -> str:
    """`llama-server (default): crashed with SIGILL on its first request — why; see llama-server.log`."""
    why = ""
    if name == "llama-server" and failure.died and context.llama_server_amx:
        probe = re.search(r"amx (crashed|failed|timed out)[^;)]*\)?", context.edge_kernel_line)
        why = (" — llama.cpp's default puts the weights in AMX buffers on this AMX build (AMX_INT8 = 1), "
               "and its AMX kernels fault on this machine"
               + (f" (edge's probe found the same: {probe.group(0)})" if probe else ""))
    elif name == "llama-cpp-python" and failure.died:
        why = (" — its server has no setting to turn llama.cpp's extra buffer types off, so where its "
               "build has AMX kernels it runs them")
    tail = f" Its log's last line: `{failure.log_tail}`." if failure.log_tail and failure.outcome != "crashed" else ""
    return f"- **{label(name)}: {failure.sentence()}**{why}; see {name}.log. Its figures are left out.{tail}"


def _header(settings, load: dict, context: RunContext, matched: tuple[str, ...], reason: str) -> list[str]:
    kernel = f"edge decided `{context.edge_kernel}`" if context.edge_kernel else "edge's decision unknown"
    amx = {True: "yes (AMX_INT8 = 1 in its system info)", False: "no (no AMX_INT8 in its system info)",
           None: "unknown (its system info could not be read)"}[context.llama_server_amx]
    return [
        "# Serving benchmark", "",
        f"Run {load.get('started', 'at an unrecorded time')} by `make bench` (bench/serve_bench.py).", "",
        f"- Machine: {load.get('machine', 'unrecorded')}.",
        f"- Load average (1/5/15 min) before: {load['before']}, after: {load['after']}. This machine is "
        "shared with other engineers' builds and test runs: absolute figures are noisy, ratios measured "
        "minutes apart on the same machine less so.",
        f"- CPU kernels: {kernel} — `{context.edge_kernel_line}` (edge's own probe and cache, for "
        f"these threads, as its server decides at start). llama-server built with AMX kernels: {amx}. "
        f"Ratios are taken against {' and '.join(label(n) for n in matched)}: {reason}.",
        f"- Model: `{settings.gguf.name}` for all; {settings.parallel} slots of {settings.ctx_per_slot} "
        f"tokens (llama-server `-np {settings.parallel} -c {settings.parallel * settings.ctx_per_slot}`, once with "
        "its defaults and once with `--no-repack`; "
        f"llama-cpp-python's server has no slots: one context of {settings.ctx_per_slot}, and no setting "
        "to turn llama.cpp's repacking off, so it runs llama.cpp's default kernels), "
        f"{settings.threads} threads, batch {settings.batch}, greedy"
        + (", every layer on the GPU." if settings.gpu_layers == -1 else
           f", {settings.gpu_layers} layers on the GPU." if settings.gpu_layers else "."),
        "- Method: all servers are up at once (an idle one costs nothing); each phase runs on each "
        "server in turn, the order rotating every round, and every figure is the median over the rounds, "
        "so that the machine's changing load hits all alike. Throughput and n=2 use raw completions "
        "of a counting prompt that this model continues at temperature 0, so every server generates "
        "exactly max_tokens (none stops early at an end-of-sequence); the conversation uses chat. "
        "A server that crashes or fails is stopped and the others go on.",
        "- llama-server's \"ISA build\" is the same code compiled with each instruction set this CPU has "
        "named explicitly (`edge/plan/isa_flags.py`: GGML_NATIVE off, no AMX) instead of `-march=native`; "
        "\"vs best llama-server\" takes, figure by figure, the best of the matching variants of both builds; "
        "\"paired by round\" is the median of edge's figure over that variant's in each round (the two run "
        "seconds apart), which the host's drift from minute to minute moves less than a ratio of medians.",
        *[_failure_note(name, failure, context) for name, failure in context.failures.items()],
    ]


def with_isa_builds(matched: tuple[str, ...]) -> tuple[str, ...]:
    """The matching llama-server variants and their twins built with explicit ISA flags (same
    kernels, another compile of the same code)."""
    return (*matched, *(name.replace("llama-server", "llama-server-isa", 1) for name in matched))


def _best(results: dict, names: tuple[str, ...], pick, higher_is_better: bool) -> str | None:
    """Which of `names` has the best figure (the fastest llama-server), among those measured."""
    measured = [name for name in names if name in results]
    if not measured:
        return None
    return (max if higher_is_better else min)(measured, key=lambda name: pick(results[name]))


def _paired(results: dict, best: str, pick) -> str:
    """The median over the rounds of edge's figure over `best`'s in the same round. The host's speed
    drifts from minute to minute (by up to a third on the shared 2-core machine); a round's two
    figures are seconds apart, the medians of a whole run are not paired at all."""
    rounds = zip(results["edge"].get("rounds", []), results[best].get("rounds", []))
    ratios = [pick(ours) / pick(theirs) for ours, theirs in rounds if ours and theirs and pick(theirs)]
    return f"{statistics.median(ratios):.2f}x" if ratios else "n/a"


def _ratio_table(results: dict, context: RunContext, matched: tuple[str, ...]) -> list[str]:
    llama_servers = tuple(name for name in with_isa_builds(matched) if name in results or name in context.failures)
    others = [*llama_servers, "llama-cpp-python"]

    def row(title: str, pick, higher_is_better: bool, target: str = "") -> str:
        cells = " | ".join(_ratio(results, context.failures, other, pick) for other in others)
        best = _best(results, llama_servers, pick, higher_is_better)
        if best is None or "edge" not in results:
            return f"| {title} | n/a | n/a | {cells} | {target} |"
        best_cell = _ratio(results, context.failures, best, pick)
        return f"| {title} | {best_cell} | {_paired(results, best, pick)} | {cells} | {target} |"

    lines = ["## Ratios (edge / other; > 1 is better for throughput, < 1 for times)", "",
             f"| Figure | vs best llama-server | same, paired by round | "
             f"{' | '.join(f'vs {label(other)}' for other in others)} | target |",
             "| --- |" + " --- |" * (len(others) + 3),
             row("single client decode tokens/s", lambda r: r["single"]["decode_tps"], True, ">= 1.0x"),
             row("single client TTFT", lambda r: r["single"]["ttft_s"], False)]
    for clients in (1, 4, 8):
        target = ">= 1.0x; >= 3x llama-cpp-python at 4" if clients > 1 else ""
        lines.append(row(f"{clients} clients aggregate tokens/s",
                         lambda r, c=clients: _row(r, c)["aggregate_tps"], True, target))
    lines.append(row("conversation turn-2 TTFT", lambda r: r["conversation"]["second_ttft_s"], False, "<= 1.0x"))
    lines.append(row("n=2 / n=1 time", lambda r: r["n2"]["n2_s"] / r["n2"]["n1_s"], False, "<= 1.0x"))
    return lines


def _figures_table(results: dict, failures: dict[str, Failure], order: list[str]) -> list[str]:
    at = {name: {row["clients"]: row for row in results[name]["concurrency"]} for name in results}
    lines = ["## Figures", "", "| Server | TTFT ms | decode tok/s | agg tok/s 1/4/8 clients | p50 s 1/4/8 "
             "| p95 s 1/4/8 | conv. TTFT turn 1 / turn 2 ms (ratio) | n=1 / n=2 s (ratio) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name in order:
        if name in failures:
            lines.append(f"| {label(name)} | {failures[name].sentence()} |" + " — |" * 6)
            continue
        result = results[name]
        rows = [at[name][c] for c in (1, 4, 8)]
        conv, n2 = result["conversation"], result["n2"]
        n2_note = "" if n2["n2_choices"] == 2 else f" ({n2['n2_choices']} choice returned: n ignored)"
        lines.append(
            f"| {label(name)} | {result['single']['ttft_s'] * 1000:.0f} | {result['single']['decode_tps']:.1f} "
            f"| {_joined(rows, 'aggregate_tps', '.1f')} "
            f"| {_joined(rows, 'p50_s', '.2f')} | {_joined(rows, 'p95_s', '.2f')} "
            f"| {conv['first_ttft_s'] * 1000:.0f} / {conv['second_ttft_s'] * 1000:.0f} ({conv['ratio']:.2f}) "
            f"| {n2['n1_s']:.2f} / {n2['n2_s']:.2f} ({n2['ratio']:.2f}){n2_note} |")
    return lines


def write_report(out: Path, settings, results: dict, load: dict, context: RunContext | None = None) -> None:
    """serve.md and the plots in `out`; `context` says what crashed and which llama-server matches edge."""
    context = context or RunContext()
    images = _plots(out, results)
    matched, reason = matching_llama_servers(context.edge_kernel, context.llama_server_amx)
    ran = set(results) | set(context.failures)
    order = sorted(ran, key=lambda name: SERVERS.index(name) if name in SERVERS else len(SERVERS))
    lines = [*_header(settings, load, context, matched, reason), "",
             *_ratio_table(results, context, matched), "",
             *_figures_table(results, context.failures, order), "",
             "Targets on edge alone: second-turn TTFT <= 0.2x first-turn; n=2 <= 1.3x the time of n=1.", "",
             *_reuse_table(results, order), "", *_profile_table(results.get("edge")), ""]
    lines += [f"![{image}]({image})" for image in images]
    lines += ["", "Raw numbers, token counts included: serve.json. Server logs: *.log beside this file.", ""]
    (out / "serve.md").write_text("\n".join(lines))


def _reuse_table(results: dict, order: list[str]) -> list[str]:
    """The conversation's prompt tokens per turn: found in the cache, and evaluated."""
    def cell(value) -> str:
        return "?" if value is None else f"{value:.0f}"

    lines = ["## Prefix reuse in the conversation", "",
             "Prompt tokens of each turn found in the server's cache (reused) and evaluated, medians over the "
             "rounds: edge's from its metrics, llama-server's from its `timings` (cache_n, prompt_n); ? where a "
             "server reports neither.", "",
             "| Server | turn 1 reused / evaluated | turn 2 reused / evaluated | turn 2 TTFT ms |",
             "| --- | --- | --- | --- |"]
    for name in order:
        if name not in results:
            continue
        conv = results[name]["conversation"]
        lines.append(f"| {label(name)} | {cell(conv.get('first_reused'))} / {cell(conv.get('first_evaluated'))} | "
                     f"{cell(conv.get('second_reused'))} / {cell(conv.get('second_evaluated'))} | "
                     f"{conv['second_ttft_s'] * 1000:.0f} |")
    return lines


_PROFILE_PHASES = ("schedule", "decode", "sample", "text", "publish", "other", "wait")


def _profile_table(edge: dict | None) -> list[str]:
    """Where edge's engine step time goes (the edge_engine_step_* metrics over each phase)."""
    rows = [("single client (streamed)", edge["single"].get("profile"))] if edge else []
    rows += [(f"{row['clients']} clients", row.get("profile")) for row in (edge or {}).get("concurrency", [])]
    rows = [(name, profile) for name, profile in rows if profile]
    if not rows:
        return []
    head = " | ".join(f"{phase} ms" for phase in _PROFILE_PHASES)
    lines = ["## Where edge's engine step goes", "",
             "Per engine step, medians over the rounds (edge/engine/step_profile.py: schedule = dropping "
             "cancelled jobs and filling the batch; decode = llama_decode; sample = the sampler chains; text = "
             "token to piece, UTF-8 and stop matching; publish = handing events to the event loop; other = the "
             "rest after the decode; wait = the part of the Python time the engine thread spent waiting for a "
             "core or the GIL, included in the others).", "",
             f"| Phase | sequences per step | {head} | Python share of a step | Python µs per sequence |",
             "| --- | --- |" + " --- |" * len(_PROFILE_PHASES) + " --- | --- |"]
    for name, p in rows:
        cells = " | ".join(f"{p[phase + '_ms']:.3f}" for phase in _PROFILE_PHASES)
        lines.append(f"| {name} | {p['sequences_per_step']:.2f} | {cells} | {100 * p['python_share']:.1f}% | "
                     f"{p['per_sequence_us']:.0f} |")
    return lines


def _row(result: dict, clients: int) -> dict:
    return next(row for row in result["concurrency"] if row["clients"] == clients)


def _joined(rows: list[dict], key: str, spec: str) -> str:
    return " / ".join(format(row[key], spec) for row in rows)
