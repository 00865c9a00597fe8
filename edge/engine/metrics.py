"""Prometheus metrics of one engine, in a registry of its own (two engines never share one)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from edge.engine.step_profile import StepProfile

# Outcomes a request can have, as the `status` label of edge_requests_total.
OUTCOMES = ("completed", "cancelled", "failed", "rejected", "timeout")

_TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)
_SHARE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
_RATE_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0)


class EngineMetrics:
    """Counters the engine moves as it works; `render` is the text of GET /metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter("edge_requests", "Requests by outcome", ["status"], registry=registry)
        for outcome in OUTCOMES:  # every series exists from the start, at 0
            self.requests.labels(outcome)
        self.prompt_tokens = Counter("edge_prompt_tokens", "Prompt tokens of admitted requests", registry=registry)
        self.prefix_hit_tokens = Counter(
            "edge_prefix_cache_hit_tokens", "Prompt tokens found in a slot's cache, not evaluated again",
            registry=registry)
        self.completion_tokens = Counter("edge_completion_tokens", "Tokens generated", registry=registry)
        self.queue_depth = Gauge("edge_queue_depth", "Requests waiting for a slot", registry=registry)
        self.busy_slots = Gauge("edge_busy_slots", "Sequence slots running a request", registry=registry)
        self.ttft = Histogram("edge_time_to_first_token_seconds", "From submission to the first token",
                              buckets=_TTFT_BUCKETS, registry=registry)
        self.decode_rate = Histogram("edge_decode_tokens_per_second",
                                     "Per request: tokens after the first / time after the first",
                                     buckets=_RATE_BUCKETS, registry=registry)
        self.drafted_tokens = Counter("edge_speculative_drafted_tokens", "Tokens drafted and decoded for "
                                      "verification (--speculative)", registry=registry)
        self.accepted_tokens = Counter("edge_speculative_accepted_tokens", "Drafted tokens the sampling agreed with",
                                       registry=registry)
        self.acceptance_rate = Histogram("edge_speculative_acceptance_rate", "Per request: accepted / drafted tokens",
                                         buckets=_SHARE_BUCKETS, registry=registry)
        self.steps = StepProfile(registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class SupervisorMetrics:
    """GET /metrics when the engine runs in a child process (--rpc): the child's own engine metrics
    (`child_text`, empty while it is down) followed by what only the HTTP process knows, under names
    of their own so that no metric family appears twice."""

    def __init__(self, child_text: Callable[[], bytes]) -> None:
        self.registry = CollectorRegistry()
        self.unavailable = Counter("edge_requests_unavailable", "Requests refused (503) while the engine process "
                                   "was not ready", registry=self.registry)
        self.restarts = Counter("edge_engine_restarts", "Engine processes started again after one died",
                                registry=self.registry)
        self.up = Gauge("edge_engine_up", "1 while the engine process is ready, else 0", registry=self.registry)
        self._child_text = child_text

    def render(self) -> bytes:
        return self._child_text() + generate_latest(self.registry)
