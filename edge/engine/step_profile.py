"""Where an engine step's time goes: the timers behind the edge_engine_step_* metrics.

A step is: schedule (drop cancelled jobs, fill the batch), decode (llama_decode, the GIL
released), then per sampled sequence: sample (its sampler chain), text (token to piece, UTF-8
decoding, stop matching) and publish (handing the events to the request's event loop); `other`
is the rest of the Python after the decode (finishing sequences and jobs, the loop's own). The
Python parts are also timed on the engine thread's own CPU clock: their wall time minus that CPU
time is `wait`, the time the thread was ready to run but held no core or no GIL (another thread
of this process, the HTTP server's, or another process held it).

The timers are always on: a few clock reads per sequence and a few float additions, against a
decode that takes milliseconds. They are added into the Prometheus counters once per step, not
once per token, so the counters' locks are taken a handful of times a step.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter

PHASES = ("schedule", "decode", "sample", "text", "publish", "other")


class StepProfile:
    """Accumulates one step's phase times, then `commit`s them into the step counters."""

    def __init__(self, registry: CollectorRegistry) -> None:
        seconds = Counter("edge_engine_step_seconds", "Engine step time by phase (wall clock)", ["phase"],
                          registry=registry)
        self._phase_counters = [seconds.labels(phase) for phase in PHASES]
        self._wait_counter = Counter("edge_engine_step_wait_seconds", "Time the engine thread's Python work "
                                     "waited for a core or the GIL (wall minus thread CPU time)", registry=registry)
        self._steps = Counter("edge_engine_steps", "Engine steps that decoded a batch", registry=registry)
        self._sequences = Counter("edge_engine_step_sequences", "Sequences sampled, summed over steps",
                                  registry=registry)
        self.totals = [0.0] * len(PHASES)  # this step's seconds, indexed like PHASES
        self._wall = self._cpu = 0.0  # where the running Python part began, on each clock
        self._python_cpu = 0.0  # thread CPU of the step's Python before the decode (its wall: totals[0])
        self._sampled = 0

    def start(self) -> None:
        """The step begins (its Python part)."""
        self.totals = [0.0] * len(PHASES)
        self._sampled = 0
        self._wall, self._cpu = time.perf_counter(), time.thread_time()

    def decoding(self) -> None:
        """The batch is full: decode starts now (the Python before it is `schedule`)."""
        self.totals[0] = time.perf_counter() - self._wall
        self._python_cpu = time.thread_time() - self._cpu

    def decoded(self) -> None:
        """Decode is done: the Python part after it starts now."""
        now = time.perf_counter()
        self.totals[1] = now - (self._wall + self.totals[0])
        self._wall, self._cpu = now, time.thread_time()

    def add(self, phase: int, seconds: float) -> None:
        """`seconds` more of PHASES[phase] (sample, text, publish) in this step."""
        self.totals[phase] += seconds

    def sampled(self) -> None:
        self._sampled += 1

    def commit(self) -> None:
        """The step is over: its figures go into the counters."""
        after_decode = time.perf_counter() - self._wall
        self.totals[-1] = max(0.0, after_decode - sum(self.totals[2:-1]))
        wall = self.totals[0] + after_decode
        cpu = self._python_cpu + time.thread_time() - self._cpu
        for counter, seconds in zip(self._phase_counters, self.totals):
            counter.inc(seconds)
        self._wait_counter.inc(max(0.0, wall - cpu))
        self._steps.inc()
        self._sequences.inc(self._sampled)


DECODE, SAMPLE, TEXT, PUBLISH = (PHASES.index(name) for name in ("decode", "sample", "text", "publish"))
