"""The request kinds of the chaos run: each sends one (or a burst of) request(s) and says what
came back as `Outcome`s, which `problems` then judges against the contract.

Normal traffic goes through the `openai` client and raw httpx; bad input is sent as raw bytes so
that nothing on the client side cleans it up first.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import jsonschema
import openai
from support import MODEL, WEATHER_TOOL

REQUEST_TIMEOUT = 90.0  # no request of the mix needs this long: one that does counts as a hang
ERROR_KEYS = {"message", "type", "param", "code"}
TOPICS = ["a cat", "the sea", "a robot", "a lost key", "winter", "a bakery", "two chess players", "a violin",
          "the moon", "a lighthouse", "a red kite", "an old map"]
PERSON_SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                                  "age": {"type": "integer", "minimum": 0, "maximum": 120}},
                 "required": ["name", "age"], "additionalProperties": False}


@dataclass
class Outcome:
    """What one request got. `status` is the HTTP status, or what happened instead:
    client_timeout (the client gave up), connect_error, dropped (the connection broke without a
    complete response) or client_exception (anything else the client raised)."""

    kind: str
    status: int | str
    seconds: float
    code: str | None = None  # error.code of an error body
    retry_after: bool = False
    shape_ok: bool = True  # the body has the shape its status promises
    stream: str | None = None  # done, abandoned (we closed it), no_done (ended without [DONE])
    stream_error: str | None = None  # error.code of an error event inside a 200 stream
    detail: str = ""


@dataclass
class Ctx:
    """One chaos client: its own connections and its own seeded random source."""

    base_url: str
    rng: random.Random
    http: httpx.Client = field(init=False)
    api: openai.OpenAI = field(init=False)

    def __post_init__(self) -> None:
        self.http = httpx.Client(base_url=self.base_url, timeout=REQUEST_TIMEOUT)
        self.api = openai.OpenAI(base_url=f"{self.base_url}/v1", api_key="unused", max_retries=0,
                                 timeout=REQUEST_TIMEOUT)

    def close(self) -> None:
        self.http.close()
        self.api.close()

    def messages(self) -> list[dict]:
        return [{"role": "user", "content": f"Write about {self.rng.choice(TOPICS)} ({self.rng.randint(1, 10**6)})."}]

    def sampling(self, low: int = 8, high: int = 48) -> dict:
        return {"max_tokens": self.rng.randint(low, high), "temperature": round(self.rng.uniform(0, 1), 2),
                "seed": self.rng.randint(0, 2**31)}


def is_error_body(body: object) -> bool:
    return isinstance(body, dict) and isinstance(body.get("error"), dict) and set(body["error"]) >= ERROR_KEYS


def _error_fields(kind: str, status: int, response: httpx.Response, started: float) -> Outcome:
    try:
        body = response.json()
    except ValueError:
        body = None
    code = body["error"].get("code") if is_error_body(body) else None
    return Outcome(kind, status, time.monotonic() - started, code, "retry-after" in response.headers,
                   is_error_body(body), detail=response.text[:160])


def from_response(kind: str, response: httpx.Response, started: float, check: Callable[[dict], bool]) -> Outcome:
    """A whole (non-streamed) response: an error body, or a 200 whose JSON `check` accepts."""
    if response.status_code != 200:
        return _error_fields(kind, response.status_code, response, started)
    try:
        ok = check(response.json())
    except (ValueError, KeyError, IndexError, TypeError, jsonschema.ValidationError):
        ok = False
    return Outcome(kind, 200, time.monotonic() - started, shape_ok=ok, detail=response.text[:160])


def transport_failure(kind: str, error: Exception, started: float) -> Outcome:
    if isinstance(error, httpx.TimeoutException | openai.APITimeoutError):
        status = "client_timeout"
    elif isinstance(error, httpx.ConnectError):
        status = "connect_error"
    elif isinstance(error, httpx.TransportError | openai.APIConnectionError):
        status = "dropped"
    else:
        status = "client_exception"
    return Outcome(kind, status, time.monotonic() - started, detail=f"{type(error).__name__}: {error}"[:160])


def _post(ctx: Ctx, kind: str, path: str, check: Callable[[dict], bool], timeout: httpx.Timeout | None = None,
          **request) -> Outcome:
    started = time.monotonic()
    try:
        response = ctx.http.post(path, timeout=timeout or REQUEST_TIMEOUT, **request)
    except Exception as error:  # noqa: BLE001 - every client-side failure is an outcome to judge
        return transport_failure(kind, error, started)
    return from_response(kind, response, started, check)


def read_stream(kind: str, response: httpx.Response, started: float, keep: int | None = None) -> Outcome:
    """An SSE body read to its end (or, with `keep`, closed by us after that many events)."""
    events, error_code, shape_ok = [], None, True
    for line in response.iter_lines():
        if not line.startswith("data: "):
            continue
        events.append(data := line.removeprefix("data: "))
        if data != "[DONE]":
            try:
                chunk = json.loads(data)
            except ValueError:
                shape_ok = False
                continue
            if "error" in chunk:
                error_code = str(chunk["error"].get("code")) if is_error_body(chunk) else "malformed_error_event"
        if keep is not None and len(events) >= keep:
            return Outcome(kind, 200, time.monotonic() - started, stream="abandoned", shape_ok=shape_ok)
    state = "done" if events and events[-1] == "[DONE]" else "no_done"
    return Outcome(kind, 200, time.monotonic() - started, shape_ok=shape_ok, stream=state, stream_error=error_code,
                   detail=" | ".join(events[-2:])[:160])


def _stream(ctx: Ctx, kind: str, body: dict, keep: int | None = None) -> Outcome:
    started = time.monotonic()
    try:
        with ctx.http.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                response.read()
                return _error_fields(kind, response.status_code, response, started)
            return read_stream(kind, response, started, keep)
    except Exception as error:  # noqa: BLE001
        return transport_failure(kind, error, started)


def _openai(kind: str, call: Callable[[], object], check: Callable[[object], bool]) -> Outcome:
    started = time.monotonic()
    try:
        result = call()
    except openai.APIStatusError as error:
        return _error_fields(kind, error.status_code, error.response, started)
    except Exception as error:  # noqa: BLE001
        return transport_failure(kind, error, started)
    try:
        ok, detail = check(result), ""
    except (ValueError, AttributeError, IndexError, TypeError, jsonschema.ValidationError) as error:
        ok, detail = False, f"{type(error).__name__}: {error}"
    if not ok:  # what came back, so that a failure in CI can be understood from its log alone
        detail = f"{detail} in {result.model_dump_json()}"[:600]
    return Outcome(kind, 200, time.monotonic() - started, shape_ok=ok, detail=detail)


# --- normal traffic -------------------------------------------------------------------------

def chat(ctx: Ctx) -> list[Outcome]:
    reply = lambda: ctx.api.chat.completions.create(model=MODEL, messages=ctx.messages(), **ctx.sampling())
    return [_openai("chat", reply, lambda r: isinstance(r.choices[0].message.content, str))]


def stream(ctx: Ctx) -> list[Outcome]:
    body = {"model": MODEL, "messages": ctx.messages(), "stream": True, **ctx.sampling(16, 64),
            "stream_options": {"include_usage": ctx.rng.random() < 0.5}}
    return [_stream(ctx, "stream", body)]


def abandoned_stream(ctx: Ctx) -> list[Outcome]:
    body = {"model": MODEL, "messages": ctx.messages(), "stream": True, **ctx.sampling(200, 400)}
    return [_stream(ctx, "abandoned_stream", body, keep=ctx.rng.randint(2, 6))]


def abandoned_whole(ctx: Ctx) -> list[Outcome]:
    """A long whole response the client gives up on (read timeout) and disconnects from."""
    body = {"model": MODEL, "messages": ctx.messages(), **ctx.sampling(300, 500)}
    timeout = httpx.Timeout(REQUEST_TIMEOUT, read=round(ctx.rng.uniform(0.3, 1.5), 2))
    return [_post(ctx, "abandoned_whole", "/v1/chat/completions", _has_message, timeout, json=body)]


def burst(ctx: Ctx) -> list[Outcome]:
    """Three short requests at once, on top of the other clients: they overfill the queue, so
    some wait past --queue-timeout (503) or find it full (429)."""
    bodies = [{"model": MODEL, "messages": ctx.messages(), **ctx.sampling(8, 32)} for _ in range(3)]

    def one(body: dict) -> Outcome:
        started = time.monotonic()
        try:
            response = httpx.post(f"{ctx.base_url}/v1/chat/completions", json=body, timeout=REQUEST_TIMEOUT)
        except Exception as error:  # noqa: BLE001
            return transport_failure("burst", error, started)
        return from_response("burst", response, started, _has_message)

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(one, bodies))


def n2(ctx: Ctx) -> list[Outcome]:
    reply = lambda: ctx.api.chat.completions.create(model=MODEL, messages=ctx.messages(), n=2,
                                                    **{**ctx.sampling(8, 32), "temperature": 0.8})
    return [_openai("n2", reply, lambda r: [c.index for c in r.choices] == [0, 1])]


def tools(ctx: Ctx) -> list[Outcome]:
    question = [{"role": "user", "content": f"What is the weather in {ctx.rng.choice(['Paris', 'Oslo', 'Lima'])}?"}]
    reply = lambda: ctx.api.chat.completions.create(model=MODEL, messages=question, tools=[WEATHER_TOOL],
                                                    tool_choice="required", **ctx.sampling(64, 96))

    def check(r) -> bool:
        choice = r.choices[0]
        if choice.finish_reason == "length":
            return True  # the grammar guarantees the shape, not that the budget suffices
        call = choice.message.tool_calls[0].function
        return choice.finish_reason == "tool_calls" and call.name == "get_weather" and "city" in json.loads(call.arguments)

    return [_openai("tools", reply, check)]


def json_output(ctx: Ctx) -> list[Outcome]:
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON_SCHEMA}}
    reply = lambda: ctx.api.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Invent a person."}], response_format=fmt,
        **ctx.sampling(32, 48))

    def check(r) -> bool:
        choice = r.choices[0]
        if choice.finish_reason != "length":
            jsonschema.validate(json.loads(choice.message.content), PERSON_SCHEMA)
        return True

    return [_openai("json", reply, check)]


def completions(ctx: Ctx) -> list[Outcome]:
    prompt = f"Once upon a time, {ctx.rng.choice(TOPICS)}"
    reply = lambda: ctx.api.completions.create(model=MODEL, prompt=prompt, **ctx.sampling(8, 48))
    return [_openai("completions", reply, lambda r: isinstance(r.choices[0].text, str))]


def _has_message(body: dict) -> bool:
    return isinstance(body["choices"][0]["message"], dict)


# --- bad input ------------------------------------------------------------------------------

def _raw(ctx: Ctx, kind: str, data: bytes, path: str = "/v1/chat/completions") -> list[Outcome]:
    return [_post(ctx, kind, path, _has_message if "chat" in path else lambda b: "choices" in b,
                  content=data, headers={"content-type": "application/json"})]


def _json_prefix(extra: str = "") -> str:
    return f'{{"model": "{MODEL}", "max_tokens": 4{extra}, '


def malformed_json(ctx: Ctx) -> list[Outcome]:
    variants = [b'{"model": "' + MODEL.encode() + b'", "messages": [', b"{not json", b"", b"[]", b"null",
                b'{"model": 1, "messages": "x"', b"\xff\xfe\x00garbage", b'{"messages": [{"role": "user"}]}}']
    return _raw(ctx, "malformed_json", ctx.rng.choice(variants))


def huge_body(ctx: Ctx, variant: int | None = None) -> list[Outcome]:
    """2-3 MB of one enormous message or an unterminated string, or 1-1.5 MB of 25-40k messages
    (each of those costs the server seconds of validation and templating)."""
    megabytes = ctx.rng.uniform(2, 3)
    variant = ctx.rng.randrange(3) if variant is None else variant % 3
    if variant == 1:
        many = json.dumps([{"role": "user", "content": "hello there"}] * int(megabytes * 1e6 / 80))
        return _raw(ctx, "huge_body", (_json_prefix() + f'"messages": {many}}}').encode())
    words = " lorem" * int(megabytes * 1e6 / 6)
    end = '"}]}' if variant == 0 else ""
    return _raw(ctx, "huge_body", (_json_prefix() + f'"messages": [{{"role": "user", "content": "{words}{end}').encode())


def over_context(ctx: Ctx) -> list[Outcome]:
    """A prompt longer than the whole context, as chat messages or as a completion prompt (a
    max_tokens past the context is no error: it is clamped to the room the prompt leaves)."""
    if ctx.rng.random() < 0.5:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "seven words " * 900}], "max_tokens": 4}
        return [_post(ctx, "over_context", "/v1/chat/completions", _has_message, json=body)]
    body = {"model": MODEL, "prompt": "seven words " * 900, "max_tokens": 4}
    return [_post(ctx, "over_context", "/v1/completions", lambda b: "choices" in b, json=body)]


def lone_surrogate(ctx: Ctx) -> list[Outcome]:
    """JSON escapes of unpaired UTF-16 surrogates: valid JSON text, but no valid Unicode string."""
    escape = ctx.rng.choice([r"\ud800", r"\udfff", r"abc\ud83d", r"\udc00\ud800 x"])
    variants = [
        (_json_prefix() + f'"messages": [{{"role": "user", "content": "{escape}"}}]}}', "/v1/chat/completions"),
        (_json_prefix() + f'"stop": ["{escape}"], "messages": [{{"role": "user", "content": "Hi"}}]}}',
         "/v1/chat/completions"),
        (_json_prefix() + f'"prompt": "Tell me {escape}"}}', "/v1/completions"),
        (f'{{"model": "{MODEL}{escape}", "messages": [{{"role": "user", "content": "Hi"}}]}}', "/v1/chat/completions"),
    ]
    text, path = ctx.rng.choice(variants)
    return _raw(ctx, "lone_surrogate", text.encode(), path)


def infinity(ctx: Ctx) -> list[Outcome]:
    """Python's json reads Infinity, -Infinity, NaN and 1e999; no field of the API accepts them."""
    field_, value = ctx.rng.choice([("temperature", "Infinity"), ("top_p", "NaN"), ("presence_penalty", "-Infinity"),
                                    ("max_tokens", "Infinity"), ("temperature", "1e999"), ("seed", "NaN"),
                                    ("repetition_penalty", "Infinity"), ("frequency_penalty", "NaN")])
    text = f'{{"model": "{MODEL}", "messages": [{{"role": "user", "content": "Hi"}}], "{field_}": {value}}}'
    return _raw(ctx, "infinity", text.encode())


def wrong_types(ctx: Ctx) -> list[Outcome]:
    """Unknown fields of any type (ignored, as OpenAI does) or known ones of the wrong type."""
    extra = ctx.rng.choice([
        {"user": 12345, "logit_bias": "nope", "metadata": [1, 2], "x_unknown": {"deep": [None, True]}},
        {"service_tier": 3.5, "logprobs": "yes", "top_logprobs": [], "store": {"a": 1}},
        {"stream_options": "yes"}, {"tools": {"type": 1}}, {"tool_choice": 7}, {"response_format": []},
        {"stop": [1, 2]}, {"seed": 2**70}, {"n": "2"}, {"max_tokens": 4.5}, {"messages": [{"role": "user", "content": 5}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": None}]}]}, {"model": ["x"]},
    ])
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, **extra}
    return [_post(ctx, "wrong_types", "/v1/chat/completions", _has_message, json=body)]


# Kind -> (sender, weight in the mix, statuses that are right for it besides the documented 429/503).
KINDS: dict[str, tuple[Callable[[Ctx], list[Outcome]], float, set]] = {
    "chat": (chat, 3, {200}),
    "stream": (stream, 3, {200}),
    "abandoned_stream": (abandoned_stream, 2, {200}),
    "abandoned_whole": (abandoned_whole, 2, {200, "client_timeout"}),
    "burst": (burst, 1, {200}),
    "n2": (n2, 1, {200}),
    "tools": (tools, 1, {200}),
    "json": (json_output, 1, {200}),
    "completions": (completions, 2, {200}),
    "malformed_json": (malformed_json, 1, {400}),
    "huge_body": (huge_body, 0.5, {400, 413}),
    "over_context": (over_context, 1, {400}),
    "lone_surrogate": (lone_surrogate, 1, {200, 400}),
    "infinity": (infinity, 1, {400}),
    "wrong_types": (wrong_types, 1, {200, 400}),
}


def problems(outcome: Outcome) -> list[str]:
    """What is wrong with an outcome, as short labels (empty: it kept the contract)."""
    found, status = [], outcome.status
    if isinstance(status, int) and status >= 500 and not (
            status == 503 and outcome.code == "queue_timeout" and outcome.retry_after):
        found.append(f"server_error_{status}")
    elif status == 429 and not (outcome.code == "queue_full" and outcome.retry_after):
        found.append("429_without_queue_full_and_retry_after")
    elif status not in KINDS[outcome.kind][2] | {429, 503}:
        found.append(f"unexpected_{status}")
    if isinstance(status, int) and not outcome.shape_ok:
        found.append("bad_body_shape" if status == 200 else "error_not_in_openai_shape")
    if outcome.stream == "no_done":
        found.append("stream_without_done")
    if outcome.stream_error:
        found.append(f"stream_error_event_{outcome.stream_error}")
    return found
