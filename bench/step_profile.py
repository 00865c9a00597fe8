"""edge's engine step profile over one benchmark phase: the edge_engine_step_* counters of
GET /metrics (edge/engine/step_profile.py) read before and after, as time per step and per
sampled sequence, by phase."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

PHASES = ("schedule", "decode", "sample", "text", "publish", "other")


_COUNTERS = {"edge_engine_step_wait_seconds_total": "wait", "edge_engine_steps_total": "steps",
             "edge_engine_step_sequences_total": "sequences"}


def samples(url: str) -> list:
    """Every sample of the server's GET /metrics, read with Prometheus' own text parser."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def snapshot(url: str) -> dict[str, float]:
    """The step counters now: seconds by phase, `wait`, `steps` and `sequences`."""
    counters: dict[str, float] = {}
    for sample in samples(url):
        if sample.name == "edge_engine_step_seconds_total":
            counters[sample.labels["phase"]] = sample.value
        elif sample.name in _COUNTERS:
            counters[_COUNTERS[sample.name]] = sample.value
    return counters


def breakdown(before: dict[str, float], after: dict[str, float]) -> dict[str, float] | None:
    """Per step: ms by phase, the wait, the mean sequences sampled; per sequence: the Python µs
    after the decode (sample + text + publish + other). None if no step ran (or no counters)."""
    steps = after.get("steps", 0) - before.get("steps", 0)
    if steps <= 0:
        return None
    delta = {key: after.get(key, 0.0) - before.get(key, 0.0) for key in (*PHASES, "wait", "sequences")}
    shaped = {f"{phase}_ms": 1000 * delta[phase] / steps for phase in PHASES}
    shaped["wait_ms"] = 1000 * delta["wait"] / steps
    shaped["steps"] = steps
    shaped["sequences_per_step"] = delta["sequences"] / steps
    python_after = sum(delta[phase] for phase in ("sample", "text", "publish", "other"))
    shaped["per_sequence_us"] = 1e6 * python_after / max(1.0, delta["sequences"])
    step = sum(delta[phase] for phase in PHASES)
    shaped["python_share"] = (step - delta["decode"]) / step if step else 0.0
    return shaped
