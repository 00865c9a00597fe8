"""Where an engine step's time goes: the timers behind the edge_engine_step_* metrics.

A step is: schedule (drop cancelled jobs, fill the batch), decode (llama_decode, the GIL
released), then per sampled sequence: sample (its sampler chain), text (token to piece, UTF-8
decoding, stop matching) and publish (handing the events to the request's event loop); `other`
is the rest of the Python after the decode (finishing sequences and jobs, the loop's own). The
Python parts are also timed on the engine thread's own CPU clock: their wall time minus that CPU
time is `wait`, the time the thread was ready to run but held no core or no GIL (another thread
of this process, the HTTP server's, or another process held it).

The timers are always on: a few clock reads per sequence and a few float additions, against a
decode that takes milliseconds. Their running totals are plain floats that Prometheus reads when
GET /metrics asks (this object is a collector), so a step takes no lock: with nine Prometheus
counter increments, each taking its lock, a step's bookkeeping took 9.9 us, now 5.4 (timeit, warm
caches, 2-core AMD EPYC). A scrape may land in the middle of a commit and see one step's phases
before its count; every figure still only grows.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily

PHASES = ("schedule", "decode", "sample", "text", "publish", "other")


class StepProfile:
    """Accumulates one step's phase times, then `commit`s them into the step counters."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.totals = [0.0] * len(PHASES)  # this step's seconds, indexed like PHASES
        self._wall = self._cpu = 0.0  # where the running Python part began, on each clock
        self._python_cpu = 0.0  # thread CPU of the step's Python before the decode (its wall: totals[0])
        self._sampled = 0
        # Since the engine started: what GET /metrics reports.
        self._phase_seconds = [0.0] * len(PHASES)
        self._wait_seconds = 0.0
        self._steps = 0
        self._sequences = 0
        registry.register(self)

    def collect(self) -> Iterator[CounterMetricFamily]:
        """The step counters, for Prometheus (called by the thread that renders GET /metrics)."""
        seconds = CounterMetricFamily("edge_engine_step_seconds", "Engine step time by phase (wall clock)",
                                      labels=["phase"])
        for phase, value in zip(PHASES, list(self._phase_seconds)):
            seconds.add_metric([phase], value)
        yield seconds
        yield CounterMetricFamily("edge_engine_step_wait_seconds", "Time the engine thread's Python work waited for "
                                  "a core or the GIL (wall minus thread CPU time)", value=self._wait_seconds)
        yield CounterMetricFamily("edge_engine_steps", "Engine steps that decoded a batch", value=self._steps)
        yield CounterMetricFamily("edge_engine_step_sequences", "Sequences sampled, summed over steps",
                                  value=self._sequences)

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
        """The step is over: its figures join the totals."""
        after_decode = time.perf_counter() - self._wall
        self.totals[-1] = max(0.0, after_decode - sum(self.totals[2:-1]))
        wall = self.totals[0] + after_decode
        cpu = self._python_cpu + time.thread_time() - self._cpu
        totals = self._phase_seconds
        for phase, seconds in enumerate(self.totals):
            totals[phase] += seconds
        self._wait_seconds += max(0.0, wall - cpu)
        self._steps += 1
        self._sequences += self._sampled


DECODE, SAMPLE, TEXT, PUBLISH = (PHASES.index(name) for name in ("decode", "sample", "text", "publish"))
