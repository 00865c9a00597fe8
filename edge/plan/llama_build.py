"""Which compiled llama.cpp this machine runs: pip's `-march=native` build or one built with this
CPU's instruction sets named explicitly (edge/plan/isa_flags.py), whichever decodes faster here.

Neither wins everywhere: on a Sapphire Rapids class Xeon the explicit build decoded 5-13% faster
(llama-bench tg128), on an AVX-512 AMD EPYC the native one decoded one stream faster. So `make
install` compiles both (each wheel cached per machine) and runs this module, which times decode with
each in a child process of its own (edge/engine/kernel_probe.py with the wheel's package first on
PYTHONPATH, plain CPU kernels, the builds taking turns within each round), installs the winner into
the running environment and records the verdict, which `edge info` prints.

The native build is what every other user of llama-cpp-python runs, so the other must beat it
clearly: by more than cpu_kernels.TIE in the median of its per-round ratios to the native build
(cpu_kernels.relative_speeds), each pair timed seconds apart, which the host's drift from minute to
minute moves less than a ratio of medians. On a shared 2-core AMD EPYC (Zen 3, AVX2, no AVX-512) one
install's ratio of medians gave the explicit build +6.5% (7 rounds); four runs later that day gave
the native one +0.7% to +2.3% (9 rounds each).

    python -m edge.plan.llama_build --wheel native=DIR [--wheel isa=DIR] --cache FILE

With one wheel it only records that build (a forced LLAMA_BUILD). Verdicts are cached in FILE, keyed
by the wheels and the CPU, so reinstalling on the same machine costs no timing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from edge.cards import DEFAULT_MODELS_DIR, resolve_model
from edge.plan.cpu_kernels import Trial, cpu_identity, measure_kernels, paired_summary, read_cache, write_cache
from edge.plan.cpu_kernels import pick as pick_fastest

BUILDS = ("native", "isa")  # a tie goes to the first: pip's own build, what every other user runs
ROUNDS = 15
METHOD = "paired-by-round"  # part of the cache key: a verdict reached another way is timed again
WORKLOAD = (64, 96)  # prompt tokens (one batch), decode tokens (one at a time) per round
RECORD_FILE = "llama-build.json"  # in the environment's prefix (sys.prefix), read by `edge info`


@dataclass(frozen=True)
class BuildVerdict:
    """The build installed, and why: each build's timing, or that it was forced."""

    build: str
    trials: tuple[Trial, ...] = ()

    def line(self) -> str:
        """`llama.cpp build: isa (make install timed each, plain kernels: native pp 163 / tg 75 tok/s; isa ...)`"""
        if not self.trials:
            return f"llama.cpp build: {self.build} (the only one compiled: LLAMA_BUILD or a GPU build; not timed)"
        timings = "; ".join(trial.describe() for trial in self.trials)
        ratios = paired_summary(self.trials, BUILDS)
        return f"llama.cpp build: {self.build} (make install timed each, plain kernels: {timings}{ratios})"

    def to_dict(self) -> dict[str, object]:
        return {"build": self.build, "trials": [asdict(trial) for trial in self.trials]}

    @classmethod
    def from_dict(cls, data: dict) -> BuildVerdict:
        return cls(data["build"], tuple(Trial(**trial) for trial in data["trials"]))


def pick(trials: list[Trial]) -> str:
    """The build that decoded fastest, by the paired rule of cpu_kernels.pick; within TIE of it, the
    earlier in BUILDS (native)."""
    survivors = [trial for trial in trials if trial.ok]
    if not survivors:
        raise RuntimeError("no llama.cpp build ran: " + "; ".join(trial.describe() for trial in trials))
    return pick_fastest(survivors, BUILDS).kernel


def time_builds(wheels: dict[str, Path], model: Path, threads: int, rounds: int = ROUNDS) -> list[Trial]:
    """Each wheel's decode speed on `model`, unpacked into a folder of its own and imported from there."""
    with tempfile.TemporaryDirectory(prefix="edge-build-") as folder:
        envs = []
        for name, wheel in wheels.items():
            target = Path(folder) / name
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(target)
            envs.append({"PYTHONPATH": str(target)})
        trials = measure_kernels(model, ["plain"] * len(wheels), threads, rounds, WORKLOAD, envs=envs)
    return [Trial(name, trial.prompt_tps, trial.decode_tps, trial.failure, trial.decode_rounds)
            for name, trial in zip(wheels, trials)]


def wheel_in(folder: Path) -> Path:
    wheels = sorted(folder.glob("*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"llama_build: expected one wheel in {folder}, found {len(wheels)}")
    return wheels[0]


def cache_key(wheels: dict[str, Path], threads: int) -> str:
    parts = {"cpu": cpu_identity(), "threads": threads, "method": METHOD, "rounds": ROUNDS,
             "wheels": {name: (str(path), path.stat().st_size) for name, path in wheels.items()}}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def decide(wheels: dict[str, Path], cache: Path, threads: int) -> BuildVerdict:
    """The cached verdict for these wheels on this CPU, else one timed now (and cached)."""
    if len(wheels) == 1:
        return BuildVerdict(next(iter(wheels)))
    key = cache_key(wheels, threads)
    try:
        return BuildVerdict.from_dict(read_cache(cache)[key])
    except (KeyError, TypeError):
        pass  # not timed yet on this machine, or an unreadable entry: time them
    trials = time_builds(wheels, resolve_model(None, DEFAULT_MODELS_DIR)[0], threads)  # the embedded model
    verdict = BuildVerdict(pick(trials), tuple(trials))
    write_cache(cache, key, verdict.to_dict())  # merged into the file, written whole and renamed
    return verdict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge.plan.llama_build", description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", action="append", required=True, metavar="BUILD=DIR",
                        help=f"a build ({', '.join(BUILDS)}) and the folder holding its wheel; the first is installed already")
    parser.add_argument("--cache", type=Path, required=True, help="where verdicts are kept")
    parser.add_argument("--threads", type=int, default=0, help="decode threads (default: all cores)")
    args = parser.parse_args(argv)
    wheels: dict[str, Path] = {}
    for item in args.wheel:
        name, _, folder = item.partition("=")
        if name not in BUILDS or not folder:
            parser.error(f"--wheel must be BUILD=DIR with BUILD one of {', '.join(BUILDS)}, not {item!r}")
        wheels[name] = wheel_in(Path(folder))
    verdict = decide(wheels, args.cache, args.threads or os.cpu_count() or 1)
    print(verdict.line(), flush=True)
    if verdict.build != next(iter(wheels)):
        subprocess.run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--quiet",
                        "--force-reinstall", "--no-deps", str(wheels[verdict.build])], check=True)
    (Path(sys.prefix) / RECORD_FILE).write_text(json.dumps(verdict.to_dict()))
    return 0


def installed_verdict() -> BuildVerdict | None:
    """What `make install` recorded for this environment (None when it was installed otherwise)."""
    try:
        return BuildVerdict.from_dict(json.loads((Path(sys.prefix) / RECORD_FILE).read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


if __name__ == "__main__":
    sys.exit(main())
