"""The install-time choice between llama.cpp builds: real child processes importing llama_cpp from
an unpacked wheel, timing real decodes.

The wheels here are this environment's own llama_cpp package zipped up (the same build twice), and
a wheel whose llama_cpp kills its importer with SIGSEGV, as a build with a faulting kernel would: the
choice must survive it, and must refuse when no build runs.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import llama_cpp
import pytest

from edge.plan import llama_build
from edge.plan.cpu_kernels import Trial
from edge.plan.llama_build import BuildVerdict, decide, pick, time_builds
from support import EMBEDDED_GGUF

THREADS = 2


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("wheels")
    package = Path(llama_cpp.__file__).parent
    good = folder / "good" / "llama_cpp_python-0.3.36-cp311-cp311-linux_x86_64.whl"
    good.parent.mkdir()
    with zipfile.ZipFile(good, "w") as archive:
        for path in package.rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                archive.write(path, Path("llama_cpp") / path.relative_to(package))
    broken = folder / "broken" / good.name
    broken.parent.mkdir()
    with zipfile.ZipFile(broken, "w") as archive:
        archive.writestr("llama_cpp/__init__.py", "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    return {"good": good, "broken": broken}


def test_pick_takes_the_faster_build_and_a_tie_goes_to_native():
    assert pick([Trial("native", 100, 100), Trial("isa", 100, 110)]) == "isa"
    assert pick([Trial("native", 100, 100), Trial("isa", 100, 101.5)]) == "native"  # within TIE
    assert pick([Trial("native", failure="crashed (SIGSEGV)"), Trial("isa", 100, 50)]) == "isa"
    with pytest.raises(RuntimeError, match="no llama.cpp build ran"):
        pick([Trial("native", failure="crashed (SIGSEGV)")])


def test_with_rounds_kept_the_other_build_must_beat_native_round_by_round():
    # The host slowed down after the first round: by their medians the explicit build looks 8% faster,
    # but timed seconds apart it was 1% slower in four rounds of five.
    native = Trial("native", 100, 120, decode_rounds=(120, 100, 100, 140, 140))
    drifted = Trial("isa", 100, 130, decode_rounds=(130, 99, 99, 139, 139))  # paired: 0.993
    assert pick([native, drifted]) == "native"
    faster = Trial("isa", 100, 130, decode_rounds=(125, 104, 104, 146, 146))  # +4% in every round
    assert pick([native, faster]) == "isa"
    assert pick([Trial("native", failure="crashed (SIGSEGV)"), drifted]) == "isa"  # a lone survivor
    barely = Trial("isa", 100, 123, decode_rounds=(123, 101, 101, 142, 142))  # +1%: within TIE
    assert pick([native, barely]) == "native"
    line = BuildVerdict("isa", (native, faster)).line()
    assert line.endswith("isa pp 100 / tg 130 tok/s; isa / native paired by round 1.042)")
    assert BuildVerdict.from_dict(json.loads(json.dumps(BuildVerdict("isa", (native, faster)).to_dict()))) == \
        BuildVerdict("isa", (native, faster))  # the rounds survive the cache file


def test_each_build_is_timed_from_its_own_wheel_and_a_crashing_one_loses(wheels):
    trials = time_builds({"native": wheels["broken"], "isa": wheels["good"]}, EMBEDDED_GGUF, THREADS, rounds=2)
    assert [trial.kernel for trial in trials] == ["native", "isa"]
    assert trials[0].failure == "crashed (SIGSEGV)"  # imported the broken wheel, not this environment's
    assert trials[1].ok and trials[1].decode_tps > 0 and trials[1].prompt_tps > 0
    assert len(trials[1].decode_rounds) == 2 and trials[0].decode_rounds == ()  # each round kept, for pairing
    assert pick(trials) == "isa"


def test_the_verdict_is_cached_per_wheels_and_cpu(wheels, tmp_path, monkeypatch):
    cache = tmp_path / "builds.json"
    timed: list[dict] = []
    real = llama_build.time_builds

    def counting(chosen, model, threads, rounds=llama_build.ROUNDS):
        timed.append(chosen)
        return real(chosen, model, threads, rounds=1)

    monkeypatch.setattr(llama_build, "time_builds", counting)
    pair = {"native": wheels["good"], "isa": wheels["broken"]}
    first = decide(pair, cache, THREADS)
    assert first.build == "native" and len(first.trials) == 2 and len(timed) == 1
    again = decide(pair, cache, THREADS)
    assert again == first and len(timed) == 1  # read back, not timed again
    assert json.loads(cache.read_text())  # kept on disk
    assert decide({"isa": wheels["good"]}, cache, THREADS) == BuildVerdict("isa")  # one build: forced, untimed
    assert len(timed) == 1


def test_the_line_says_which_build_and_why():
    timed = BuildVerdict("isa", (Trial("native", 500, 100), Trial("isa", 520, 112)))
    assert timed.line() == ("llama.cpp build: isa (make install timed each, plain kernels: "
                            "native pp 500 / tg 100 tok/s; isa pp 520 / tg 112 tok/s)")
    assert BuildVerdict.from_dict(timed.to_dict()) == timed
    assert "LLAMA_BUILD" in BuildVerdict("native").line()


def test_the_command_refuses_a_bad_build_name(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        llama_build.main(["--wheel", f"fast={tmp_path}", "--cache", str(tmp_path / "c.json")])
    assert exited.value.code == 2
    assert "--wheel must be BUILD=DIR" in capsys.readouterr().err
