"""bench/reports/serve.md and its PNG plots, from the measured results."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"edge": "tab:blue", "llama-server": "tab:orange", "llama-cpp-python": "tab:green"}


def _bars(ax, names: list[str], values: list[float], title: str, unit: str) -> None:
    ax.bar(names, values, color=[COLORS.get(n, "gray") for n in names])
    ax.set_title(title)
    ax.set_ylabel(unit)
    for index, value in enumerate(values):
        ax.annotate(f"{value:.3g}", (index, value), ha="center", va="bottom")


def _plots(out: Path, results: dict) -> list[str]:
    names = list(results)
    files = []
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    _bars(axes[0], names, [results[n]["single"]["ttft_s"] * 1000 for n in names], "Single client: time to first token", "ms")
    _bars(axes[1], names, [results[n]["single"]["decode_tps"] for n in names], "Single client: decode rate", "tokens/s")
    files.append(_save(fig, out / "serve_single.png"))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name in names:
        rows = results[name]["concurrency"]
        clients = [row["clients"] for row in rows]
        axes[0].plot(clients, [row["aggregate_tps"] for row in rows], "o-", label=name, color=COLORS.get(name))
        axes[1].plot(clients, [row["p50_s"] for row in rows], "o-", label=f"{name} p50", color=COLORS.get(name))
        axes[1].plot(clients, [row["p95_s"] for row in rows], "o--", label=f"{name} p95", color=COLORS.get(name))
    axes[0].set(title="Aggregate completion tokens/s", xlabel="concurrent clients", ylabel="tokens/s")
    axes[1].set(title="Request latency", xlabel="concurrent clients", ylabel="s")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.set_xticks([1, 4, 8])
    files.append(_save(fig, out / "serve_concurrency.png"))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    width = 0.38
    for index, name in enumerate(names):
        conv = results[name]["conversation"]
        axes[0].bar([index - width / 2], [conv["first_ttft_s"] * 1000], width, color="lightgray")
        axes[0].bar([index + width / 2], [conv["second_ttft_s"] * 1000], width, color=COLORS.get(name))
    axes[0].set_xticks(range(len(names)), names)
    axes[0].set(title="~1500-token conversation: TTFT, turn 1 (gray) vs turn 2", ylabel="ms")
    _bars(axes[1], names, [results[n]["n2"]["ratio"] for n in names], "n=2 wall time / n=1 wall time", "ratio")
    files.append(_save(fig, out / "serve_conversation_n2.png"))
    return files


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path.name


def _ratio(results: dict, other: str, pick) -> str:
    if "edge" not in results or other not in results:
        return "n/a"
    theirs = pick(results[other])
    return f"{pick(results['edge']) / theirs:.2f}x" if theirs else "n/a"


def _machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}, Python {platform.python_version()}, edge at {commit}"


def write_report(out: Path, settings, results: dict, load: dict) -> None:
    images = _plots(out, results)
    at = {name: {row["clients"]: row for row in results[name]["concurrency"]} for name in results}
    lines = [
        "# Serving benchmark", "",
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `make bench` (bench/serve_bench.py).", "",
        f"- Machine: {_machine()}.",
        f"- Load average (1/5/15 min) before: {load['before']}, after: {load['after']}. This machine is "
        "shared with other engineers' builds and test runs: absolute figures are noisy, ratios measured "
        "minutes apart on the same machine less so.",
        f"- Model: `{settings.gguf.name}` for all three; {settings.parallel} slots of {settings.ctx_per_slot} "
        f"tokens (llama-server `-np {settings.parallel} -c {settings.parallel * settings.ctx_per_slot}`; "
        f"llama-cpp-python's server has no slots: one context of {settings.ctx_per_slot}), "
        f"{settings.threads} threads, batch {settings.batch}, greedy"
        + (", every layer on the GPU." if settings.gpu_layers == -1 else
           f", {settings.gpu_layers} layers on the GPU." if settings.gpu_layers else "."),
        "- Method: all three servers are up at once (an idle one costs nothing); each phase runs on each "
        "server in turn, the order rotating every round, and every figure is the median over the rounds, "
        "so that the machine's changing load hits all three alike. Throughput and n=2 use raw completions "
        "of a counting prompt that this model continues at temperature 0, so every server generates "
        "exactly max_tokens (none stops early at an end-of-sequence); the conversation uses chat.", "",
        "## Ratios (edge / other; > 1 is better for throughput, < 1 for times)", "",
        "| Figure | vs llama-server | vs llama-cpp-python | target |", "| --- | --- | --- | --- |",
        f"| single client decode tokens/s | {_ratio(results, 'llama-server', lambda r: r['single']['decode_tps'])} "
        f"| {_ratio(results, 'llama-cpp-python', lambda r: r['single']['decode_tps'])} | >= 0.95x llama-server |",
        f"| single client TTFT | {_ratio(results, 'llama-server', lambda r: r['single']['ttft_s'])} "
        f"| {_ratio(results, 'llama-cpp-python', lambda r: r['single']['ttft_s'])} | |",
    ]
    for clients in (1, 4, 8):
        lines.append(
            f"| {clients} clients aggregate tokens/s "
            f"| {_ratio(results, 'llama-server', lambda r, c=clients: _row(r, c)['aggregate_tps'])} "
            f"| {_ratio(results, 'llama-cpp-python', lambda r, c=clients: _row(r, c)['aggregate_tps'])} "
            f"| {'>= 1.0x llama-server, >= 3x llama-cpp-python' if clients == 4 else ''} |")
    lines += ["", "## Figures", "", "| Server | TTFT ms | decode tok/s | agg tok/s 1/4/8 clients | p50 s 1/4/8 "
              "| p95 s 1/4/8 | conv. TTFT turn 1 / turn 2 ms (ratio) | n=1 / n=2 s (ratio) |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, result in results.items():
        rows = [at[name][c] for c in (1, 4, 8)]
        conv, n2 = result["conversation"], result["n2"]
        n2_note = "" if n2["n2_choices"] == 2 else f" ({n2['n2_choices']} choice returned: n ignored)"
        lines.append(
            f"| {name} | {result['single']['ttft_s'] * 1000:.0f} | {result['single']['decode_tps']:.1f} "
            f"| {_joined(rows, 'aggregate_tps', '.1f')} "
            f"| {_joined(rows, 'p50_s', '.2f')} | {_joined(rows, 'p95_s', '.2f')} "
            f"| {conv['first_ttft_s'] * 1000:.0f} / {conv['second_ttft_s'] * 1000:.0f} ({conv['ratio']:.2f}) "
            f"| {n2['n1_s']:.2f} / {n2['n2_s']:.2f} ({n2['ratio']:.2f}){n2_note} |")
    lines += ["", "Targets on edge alone: second-turn TTFT <= 0.2x first-turn; n=2 <= 1.3x the time of n=1.", ""]
    lines += [f"![{image}]({image})" for image in images]
    lines += ["", "Raw numbers, token counts included: serve.json. Server logs: *.log beside this file.", ""]
    (out / "serve.md").write_text("\n".join(lines))


def _row(result: dict, clients: int) -> dict:
    return next(row for row in result["concurrency"] if row["clients"] == clients)


def _joined(rows: list[dict], key: str, spec: str) -> str:
    return " / ".join(format(row[key], spec) for row in rows)
