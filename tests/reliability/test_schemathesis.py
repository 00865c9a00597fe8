"""Schemathesis against the server's own /openapi.json: over 1000 generated requests, valid and
invalid by the schema, and not one server error.

Cases come from schemathesis' Python API (`schemathesis.openapi.from_url`, then each operation's
`as_strategy` for positive and negative data) run under Hypothesis with fixed example counts,
and every response goes through schemathesis' `not_a_server_error` check. Nothing stops at the
first failure, so the report lists every server error with a curl line to replay it.

Bounded time: generation is derandomized (the same cases every run, no shrinking), the server's
context is small, and every JSON body's `max_tokens` (and `max_completion_tokens`) is capped at
MAX_TOKENS when it is absent, null or a value the schema allows; invalid values are left alone.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from support import MODEL, Server

from .chaos_kinds import is_error_body

pytestmark = pytest.mark.reliability

MIN_CASES = 1000
MAX_TOKENS = 4
KEEP_MODEL_EVERY = 8  # one body in 8 keeps its generated model name (a 404); the rest name the served one
POSITIVE, NEGATIVE = GenerationMode.POSITIVE, GenerationMode.NEGATIVE
# Examples per operation and mode. GETs without parameters have next to nothing to vary.
EXAMPLES = {
    "POST /v1/chat/completions": {POSITIVE: 480, NEGATIVE: 260},
    "POST /v1/completions": {POSITIVE: 240, NEGATIVE: 120},
}
GET_EXAMPLES = {POSITIVE: 5}


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(["--parallel", "2", "--ctx-size", "512"], {}, tmp_path_factory.mktemp("fuzz") / "serve.log")
    yield server
    server.stop()


@dataclass
class Tally:
    cases: int = 0
    by_operation: Counter = field(default_factory=Counter)
    statuses: Counter = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    broken_streams: list[str] = field(default_factory=list)
    transport_errors: list[str] = field(default_factory=list)
    odd_error_bodies: list[str] = field(default_factory=list)  # 4xx not in OpenAI's error shape


def bound(body: object, index: int) -> None:
    """Keep generation cheap: a few tokens per request, and mostly the served model's name."""
    if not isinstance(body, dict):
        return
    if isinstance(body.get("model"), str) and index % KEEP_MODEL_EVERY:
        body["model"] = MODEL
    body.setdefault("max_tokens", MAX_TOKENS)  # the defaults (512 for chat) would take seconds
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key, False)
        if value is None or (type(value) is int and 0 <= value <= 100_000):  # null: all the room left
            body[key] = MAX_TOKENS if value is None else min(value, MAX_TOKENS)


def _stream_ok(response) -> bool:
    """An event stream read to its end closes with [DONE] and carries no error event."""
    content_type = (response.headers.get("content-type") or [""])[0]
    if response.status_code != 200 or not content_type.startswith("text/event-stream") or response.stream_cut_short:
        return True
    events = [line[6:] for line in response.content.decode(errors="replace").splitlines() if line.startswith("data: ")]
    return bool(events) and events[-1] == "[DONE]" and not any(e.startswith('{"error"') for e in events)


def judge(case, response, tally: Tally, label: str) -> None:
    tally.statuses[response.status_code] += 1
    replay = case.as_curl_command()
    try:
        case.validate_response(response, checks=[not_a_server_error])
    except Exception as failure:  # noqa: BLE001 - schemathesis raises its failure types (or a group of them)
        tally.server_errors.append(f"{label}: {response.status_code} {type(failure).__name__}: "
                                   f"{response.content[:300]!r}\n    {replay}")
    if not _stream_ok(response):
        tally.broken_streams.append(f"{label}: {response.content[-300:]!r}\n    {replay}")
    if 400 <= response.status_code < 500:
        try:
            shaped = is_error_body(response.json())
        except ValueError:
            shaped = False
        if not shaped:
            tally.odd_error_bodies.append(f"{label}: {response.status_code} {response.content[:200]!r}")


def run_operation(operation, mode: GenerationMode, examples: int, session: requests.Session, tally: Tally) -> None:
    label = f"{operation.label} [{mode.value}]"

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), verbosity=Verbosity.quiet)
    @given(case=operation.as_strategy(generation_mode=mode))
    def one(case) -> None:
        bound(case.body, tally.cases)
        tally.cases += 1
        tally.by_operation[label] += 1
        try:
            response = case.call(session=session, timeout=60)
        except requests.RequestException as error:
            tally.transport_errors.append(f"{label}: {type(error).__name__}: {error}\n    {case.as_curl_command()}")
            return
        judge(case, response, tally, label)

    one()


def test_schemathesis_finds_no_server_error(fuzz_server):
    started = time.monotonic()
    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")
    tally = Tally()
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode, examples in EXAMPLES.get(operation.label, GET_EXAMPLES).items():
                run_operation(operation, mode, examples, session, tally)
    seconds = time.monotonic() - started
    print(f"\nschemathesis: {tally.cases} cases in {seconds:.0f} s; by operation {dict(tally.by_operation)}; "
          f"statuses {dict(sorted(tally.statuses.items()))}; server errors {len(tally.server_errors)}, "
          f"broken streams {len(tally.broken_streams)}, transport errors {len(tally.transport_errors)}, "
          f"4xx bodies not in OpenAI's shape {len(tally.odd_error_bodies)}")
    for line in tally.odd_error_bodies[:5]:
        print(f"  odd error body: {line}")
    assert tally.cases >= MIN_CASES, f"only {tally.cases} cases ran"
    assert not tally.server_errors, f"{len(tally.server_errors)} server errors:\n" + "\n".join(tally.server_errors[:20])
    assert not tally.transport_errors, "requests without a response:\n" + "\n".join(tally.transport_errors[:20])
    assert not tally.broken_streams, "streams without [DONE] or with an error event:\n" + "\n".join(tally.broken_streams[:20])
    assert fuzz_server.process.poll() is None, "the server died"
