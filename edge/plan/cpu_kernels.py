"""Which CPU kernels read the weights (AMX, repacked layouts or plain), chosen by a probe per machine and model.

No fixed choice is safe and fast everywhere: on some AMX machines (KVM guests of Sapphire Rapids
class Xeons) llama.cpp's AMX kernels fault on the first batched matrix product, and repacking speeds
up Q4_0 by a third on one CPU while slowing Q4_K_M down by a quarter. So each candidate this build
offers (backends.CPU_KERNELS) runs in a child process of its own (edge/engine/kernel_probe.py) on a
small model: the served file itself when it is small (OWN_FILE_MAX_BYTES), else a synthetic one
with its architecture and file type (convert/synthetic.py); a faulting kernel kills only its child.
The fastest survivor by decode speed wins, each compared round by round with the simplest
(relative_speeds; see TIE for close calls). Trials are cached, keyed by the CPU's model and flags,
the llama.cpp build, the model's tensor types and the thread count, so later starts pay nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import gguf
import llama_cpp

from convert.synthetic import SyntheticShape, write_synthetic
from edge.engine import backends
from edge.engine.llama_model import route_llama_log
from edge.plan.gguf_info import WeightTypes

log = logging.getLogger("edge.plan")

CHOICES = ("auto", *backends.CPU_KERNELS)
PROBE_VERSION = 2  # bump when the probe's workload changes: older cached trials no longer compare
PROBE_TIMEOUT = 120.0  # seconds a candidate may take to load or to run a round; a hung kernel has failed
PROBE_ROUNDS = 5
PROBE_WORKLOAD = (128, 32)  # prompt tokens (one batch), decode tokens (one at a time) per round
# Decode speeds within this share of the best count as a tie, which goes to the kernel with fewer ways
# to fail: plain, then repack, then amx (backends.CPU_KERNELS from the end).
TIE = 0.02
CACHE_FILE = "cpu-kernels.json"
# A model file up to this size is probed itself: one child per candidate maps it (the page cache is
# shared) and repacks its own copy. The synthetic stand-in ranks kernels by its own shapes, which
# was wrong by 6% for a 135M-parameter Q4_K_M model; bigger files would make the probe slow.
OWN_FILE_MAX_BYTES = 512 << 20


@dataclass(frozen=True)
class Trial:
    """One candidate's probe: its speeds, or why it did not finish."""

    kernel: str
    prompt_tps: float = 0.0
    decode_tps: float = 0.0  # the median of decode_rounds
    failure: str = ""  # empty when the probe ran to its end
    # Each round's decode tokens/s, in order: the candidates took turns within each round, so
    # round i of two trials was timed seconds apart (comparable pairwise, unlike rounds far apart).
    decode_rounds: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "decode_rounds", tuple(self.decode_rounds))  # read back from JSON as a list

    @property
    def ok(self) -> bool:
        return not self.failure

    def describe(self) -> str:
        if not self.ok:
            return f"{self.kernel} {self.failure}"
        return f"{self.kernel} pp {self.prompt_tps:.0f} / tg {self.decode_tps:.0f} tok/s"


@dataclass(frozen=True)
class KernelChoice:
    """The kernels a model loads with, and the evidence: the probe's trials (none for forced plain)."""

    kernel: str
    requested: str
    trials: tuple[Trial, ...]
    cached: bool
    seconds: float  # what deciding cost this time

    def line(self) -> str:
        """`CPU kernels: repack (auto; probe, cached: amx crashed (SIGSEGV); repack pp 928 / tg 214 tok/s; ...)`"""
        if not self.trials and self.requested == "plain":
            return f"CPU kernels: {self.kernel} ({self.requested}; plain kernels need no probe)"
        if not self.trials:
            return (f"CPU kernels: {self.kernel} ({self.requested}; no weight type that AMX or repacking takes, "
                    "so every choice reads the weights alike: no probe)")
        source = "probe, cached" if self.cached else f"probe, {self.seconds:.1f} s"
        timings = "; ".join(t.describe() for t in self.trials)
        return f"CPU kernels: {self.kernel} ({self.requested}; {source}: {timings}{paired_summary(self.trials)})"


def validate_choice(value: str) -> str:
    """`value` if it is a known --cpu-kernels choice, else ValueError."""
    if value not in CHOICES:
        raise ValueError(f"must be one of {', '.join(CHOICES)}, not {value!r}")
    return value


def choose(requested: str, model: WeightTypes, threads: int, cache_dir: Path,
           busy: Callable[[], str] | None = None) -> KernelChoice:
    """The kernels to load `model` with; ValueError when a forced choice cannot run here.
    `busy` says why the machine is too busy for trustworthy timings (default: machine_busy)."""
    validate_choice(requested)
    started = time.monotonic()
    if requested == "plain":
        return KernelChoice("plain", requested, (), True, 0.0)
    if requested == "auto" and not kernel_sensitive_types(model):
        return KernelChoice("plain", requested, (), True, 0.0)
    candidates = backends.offered_kernels() if requested == "auto" else [requested]
    for kernel in candidates:
        backends.kernel_buffer_types(kernel)  # ValueError for a forced kernel this build lacks
    trials, cached = _trials(candidates, model, threads, cache_dir, busy or machine_busy)
    seconds = time.monotonic() - started
    if requested != "auto":
        if not trials[0].ok:
            raise ValueError(f"--cpu-kernels {requested}: its probe {trials[0].failure} on this machine; "
                             "use auto or plain")
        return KernelChoice(requested, requested, trials, cached, seconds)
    survivors = [trial for trial in trials if trial.ok]
    if not survivors:
        raise ValueError("no CPU kernel survived its probe: " + "; ".join(t.describe() for t in trials))
    best = pick(survivors)
    return KernelChoice(best.kernel, requested, trials, cached, seconds)


# Weight types that AMX (amx/common.h: qtype_has_amx_kernels) or CPU_REPACK (repack.cpp:
# ggml_repack_get_optimal_repack_type) may take, in the vendored llama.cpp. Erring on inclusion is
# cheap (a probe that finds no difference); a type left out only forgoes a speed-up, never safety.
KERNEL_SENSITIVE = frozenset({"Q4_0", "Q4_1", "Q8_0", "Q2_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS", "IQ4_NL", "MXFP4", "Q1_0"})


def kernel_sensitive_types(model: WeightTypes) -> set[str]:
    """The model's weight types whose kernels the choice changes (the rest run the same everywhere)."""
    return {kind for _, kind in model.tensors} & KERNEL_SENSITIVE


DEFAULT_PREFERENCE = tuple(reversed(backends.CPU_KERNELS))  # plain, repack, amx: fewest ways to fail first


def pick(survivors: list[Trial], preferred: tuple[str, ...] = DEFAULT_PREFERENCE) -> Trial:
    """The fastest decoder; among those within TIE of it, the one earliest in `preferred` (for
    kernels: the simplest). Also picks between llama.cpp builds (edge/plan/llama_build.py)."""
    speeds = relative_speeds(survivors, preferred)
    fastest = max(speeds)
    tied = [trial for trial, speed in zip(survivors, speeds) if speed >= fastest * (1 - TIE)]
    return _first_preferred(tied, preferred)


def _first_preferred(trials: list[Trial], preferred: tuple[str, ...]) -> Trial:
    """The trial whose candidate comes earliest in `preferred` (the simplest kernel; the native build)."""
    return min(trials, key=lambda trial: preferred.index(trial.kernel))


def relative_speeds(survivors: list[Trial], preferred: tuple[str, ...]) -> list[float]:
    """Each trial's decode speed over that of the one earliest in `preferred`: the median over rounds
    of the two timed in the same round when every trial kept the same rounds (the candidates took
    turns, so a round's pair was timed seconds apart and the host's drift between rounds cancels),
    else the ratio of their medians (trials read from an older cache)."""
    base = _first_preferred(survivors, preferred)
    if paired(survivors):
        return [statistics.median(ours / theirs for ours, theirs in zip(trial.decode_rounds, base.decode_rounds))
                for trial in survivors]
    return [trial.decode_tps / base.decode_tps for trial in survivors]


def paired_summary(trials: tuple[Trial, ...], preferred: tuple[str, ...] = DEFAULT_PREFERENCE) -> str:
    """`; repack / plain paired by round 0.973` for each survivor but the simplest, when they can be
    paired (what `pick` decided by); empty otherwise."""
    survivors = [trial for trial in trials if trial.ok]
    if len(survivors) < 2 or not paired(survivors):
        return ""
    base = _first_preferred(survivors, preferred).kernel
    return "".join(f"; {trial.kernel} / {base} paired by round {speed:.3f}"
                   for trial, speed in zip(survivors, relative_speeds(survivors, preferred)) if trial.kernel != base)


def paired(trials: list[Trial] | tuple[Trial, ...]) -> bool:
    """Whether these trials kept the same number of rounds (timed in turns), so they can be paired."""
    return bool(trials) and all(trial.decode_rounds and len(trial.decode_rounds) == len(trials[0].decode_rounds)
                                for trial in trials)


def _trials(candidates: list[str], model: WeightTypes, threads: int, cache_dir: Path,
            busy_check: Callable[[], str]) -> tuple[tuple[Trial, ...], bool]:
    """Each candidate's trial, from the cache or probed now (all of the missing ones on one model file)."""
    key = cache_key(model, threads)
    cache_path = cache_dir / CACHE_FILE
    known = read_cache(cache_path).get(key, {})
    missing = [kernel for kernel in candidates if kernel not in known]
    if missing:
        busy = busy_check()
        for trial in _probe(model, missing, threads):
            known[trial.kernel] = asdict(trial)
        if busy:
            # Timings taken while other work competes for the cores rank kernels by luck: use this
            # verdict for this start only, and probe again at the next.
            log.warning("CPU kernel probe ran on a busy machine (%s); its verdict is not cached", busy)
        else:
            write_cache(cache_path, key, known)
    return tuple(Trial(**known[kernel]) for kernel in candidates), not missing


def probes_own_file(model: WeightTypes) -> bool:
    return model.path is not None and 0 < model.file_bytes <= OWN_FILE_MAX_BYTES


def _probe(model: WeightTypes, kernels: list[str], threads: int) -> list[Trial]:
    """Trials of `kernels` on the model's own file, or on a stand-in shaped after it."""
    if probes_own_file(model):
        return measure_kernels(model.path, kernels, threads)
    with tempfile.TemporaryDirectory(prefix="edge-probe-") as folder:
        route_llama_log()  # the quantizer's per-tensor lines go to the debug log, not the console
        synthetic = write_synthetic(Path(folder) / "probe.gguf", probe_file_type(model), probe_shape(model),
                                    threads=threads, **_edge_types(model))
        return measure_kernels(synthetic, kernels, threads)


class _ProbeChild:
    """One candidate's child process (edge/engine/kernel_probe.py); its death is the candidate's failure."""

    def __init__(self, model: Path, kernel: str, threads: int, workload: tuple[int, int], timeout: float,
                 extra_env: dict[str, str] | None = None) -> None:
        self.kernel = kernel
        self.timeout = timeout
        self.failure = ""
        self.rounds: list[dict[str, float]] = []
        self._stderr = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: it can never fill and block
        command = [sys.executable, "-m", "edge.engine.kernel_probe", str(model), kernel, str(threads), *map(str, workload)]
        # Children wait for their turn between rounds. OpenMP's threads spin while they wait, by
        # default: two idle children then took the cores from the one being timed, and decode ran at
        # a quarter of its speed. Passive waiting costs the timed child a wake-up per token, alike for all.
        env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, **(extra_env or {})}
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self._stderr, text=True, env=env)
        self._read()  # {"ready": true} once loaded and one batch decoded

    def run_round(self) -> None:
        if self.failure:
            return
        try:
            self.process.stdin.write("round\n")
            self.process.stdin.flush()
        except OSError:
            pass  # it died: _read says how
        figures = self._read()
        if figures:
            self.rounds.append(figures)

    def _read(self) -> dict[str, float]:
        ready, _, _ = select.select([self.process.stdout], [], [], self.timeout)
        line = self.process.stdout.readline() if ready else None
        if line:
            return json.loads(line)
        if line is None:
            self.process.kill()
        self.failure = self._why(line is None)
        return {}

    def _why(self, timed_out: bool) -> str:
        code = self.process.wait()
        if timed_out:
            return f"timed out after {self.timeout:.0f} s"
        if code < 0:
            return f"crashed ({signal.Signals(-code).name})"
        self._stderr.seek(0)
        last = (self._stderr.read().strip().splitlines() or ["no message"])[-1]
        return f"failed (exit {code}: {last[:200]})"

    def trial(self) -> Trial:
        if self.failure or not self.rounds:
            return Trial(self.kernel, failure=self.failure or "measured nothing")
        decode = tuple(r["decode_tps"] for r in self.rounds)
        return Trial(self.kernel, statistics.median(r["prompt_tps"] for r in self.rounds), statistics.median(decode),
                     decode_rounds=decode)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._stderr.close()


def measure_kernels(model: Path, kernels: list[str], threads: int, rounds: int = PROBE_ROUNDS,
                    workload: tuple[int, int] = PROBE_WORKLOAD, timeout: float = PROBE_TIMEOUT,
                    envs: list[dict[str, str]] | None = None) -> list[Trial]:
    """Each kernel's median prompt and decode speed on `model` over `rounds`, the kernels taking turns
    within each round; a kernel whose child dies or hangs gets a failed trial. Kernels may repeat;
    `envs` gives each kernel's child extra environment (another llama.cpp build on its PYTHONPATH)."""
    children: list[_ProbeChild] = []
    try:
        for index, kernel in enumerate(kernels):  # loaded one at a time, so no load competes with another's timing
            children.append(_ProbeChild(model, kernel, threads, workload, timeout, envs[index] if envs else None))
        for _ in range(rounds):
            for child in children:
                child.run_round()
        return [child.trial() for child in children]
    finally:
        for child in children:
            child.close()


def probe_file_type(model: WeightTypes) -> int:
    """The model's llama.cpp file type (so the probe gets the same quant mix), else that of its
    commonest quantized type."""
    if model.file_type >= 0:
        return model.file_type
    weights = [kind for _, kind in model.tensors if kind != "F32"]
    if weights:
        common = max(set(weights), key=weights.count)
        for name in (f"MOSTLY_{common}", f"MOSTLY_{common}_M"):
            if name in gguf.LlamaFileType.__members__:
                return int(gguf.LlamaFileType[name])
    return int(gguf.LlamaFileType.MOSTLY_F16)


def probe_shape(model: WeightTypes) -> SyntheticShape:
    """Dense or MoE, with or without an output head of its own, as the model is; the size is fixed
    (about 45M weights: loads and runs in a second)."""
    tied = model.type_of("output.weight") is None
    if model.experts:
        return SyntheticShape(experts=4, ffn=1280, tied_output=tied)
    return SyntheticShape(tied_output=tied)


def _edge_types(model: WeightTypes) -> dict[str, int]:
    """The model's own types for token_embd and output, which the quantizer's rules would pick
    differently for the probe's small vocabulary."""
    chosen = {"token_embd_type": model.type_of("token_embd.weight"), "output_type": model.type_of("output.weight")}
    return {key: int(gguf.GGMLQuantizationType[name]) for key, name in chosen.items() if name}


def machine_busy() -> str:
    """Why the machine is too busy for timings to be trusted ('' when it is not): a 1-minute load
    average at or above the number of cores."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return ""
    cores = os.cpu_count() or 1
    return f"load average {load:.1f} on {cores} cores" if load >= cores else ""


def cache_key(model: WeightTypes, threads: int) -> str:
    """What a trial's outcome depends on: this CPU, this llama.cpp build, the model's types, threads."""
    parts = {
        "probe": PROBE_VERSION,
        "cpu": cpu_identity(),
        "build": build_identity(),
        "file_type": model.file_type,
        "types": sorted({kind for _, kind in model.tensors}),
        "moe": bool(model.experts),
        "threads": threads,
        "subject": model.file_bytes if probes_own_file(model) else "stand-in",
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def cpu_identity() -> dict[str, object]:
    """The CPU's model name and feature flags (Linux's /proc/cpuinfo; elsewhere what Python knows)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        import platform

        return {"model": platform.processor() or platform.machine(), "flags": []}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break  # the first processor's block describes them all
        name, _, value = line.partition(":")
        fields[name.strip()] = value.strip()
    flags = fields.get("flags") or fields.get("Features", "")
    return {"model": fields.get("model name", fields.get("CPU part", "")), "flags": sorted(flags.split())}


def build_identity() -> dict[str, object]:
    """llama-cpp-python's version, llama.cpp's compiled-in features and its library files' identity."""
    folder = Path(llama_cpp.__file__).parent / "lib"
    libraries = sorted(folder.glob("*ggml*")) + sorted(folder.glob("*llama*")) if folder.is_dir() else []
    return {
        "version": llama_cpp.__version__,
        "system_info": llama_cpp.llama_print_system_info().decode(errors="replace"),
        "libraries": [(path.name, path.stat().st_size, int(path.stat().st_mtime)) for path in libraries],
    }


def read_cache(path: Path) -> dict[str, dict[str, dict]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # absent or unreadable: probe again
    return data if isinstance(data, dict) else {}


def write_cache(path: Path, key: str, trials: dict[str, dict]) -> None:
    """Merge one entry (this model's trials, or a build verdict) into the file; written whole to a temporary name, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = read_cache(path)
    data[key] = trials
    partial = path.with_name(f"{path.name}.{os.getpid()}.part")
    partial.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(partial, path)


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/edge, else ~/.cache/edge."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edge"
