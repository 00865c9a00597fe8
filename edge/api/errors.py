"""One error type for the API, rendered in OpenAI's error shape, or Anthropic's on the Anthropic
routes (/v1/messages...); its status sets the HTTP code."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          415: "invalid_request_error", 429: "rate_limit_error", 503: "service_unavailable"}
# Anthropic's documented error types. It has no 503: an engine that is down, restarting or whose
# queue timed out is what it calls overloaded (529), which its SDK retries the same way.
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
                    529: "overloaded_error"}
_ANTHROPIC_STATUS = {503: 529}
ANTHROPIC_PREFIX = "/v1/messages"


class EdgeError(Exception):
    """An error a client caused or can act on."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.retry_after = retry_after  # seconds, sent as Retry-After (429, 503)

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": _TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.code}}

    @property
    def anthropic_status(self) -> int:
        return _ANTHROPIC_STATUS.get(self.status, self.status)

    def anthropic_body(self) -> dict:
        fallback = "invalid_request_error" if self.status < 500 else "api_error"
        kind = _ANTHROPIC_TYPES.get(self.anthropic_status, fallback)
        return {"type": "error", "error": {"type": kind, "message": self.message}}

    def response(self, anthropic: bool = False) -> JSONResponse:
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else None
        if anthropic:
            return JSONResponse(self.anthropic_body(), status_code=self.anthropic_status, headers=headers)
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


# Codes the request models raise themselves (pydantic_core.PydanticCustomError(code, ...)): each
# error keeps its own; every other validation problem is an "invalid_value".
_MODEL_CODES = frozenset({"invalid_value", "invalid_schema", "unsupported_field"})
_NOT_AN_OBJECT = frozenset({"missing", "model_attributes_type", "dict_type"})  # of the body itself


def from_validation(error: RequestValidationError, content_type: str | None = None) -> EdgeError:
    """The most specific validation problem, phrased as `param: what is wrong`; `content_type` is
    the request's header, which explains a body FastAPI did not read as JSON."""
    problems = error.errors()
    if any(problem.get("type") == "json_invalid" for problem in problems):
        return EdgeError(400, "the request body is not valid JSON", None, "invalid_json")
    # A value that fits no member of a union fails once per member: the deepest failure is the
    # one that says what is wrong (an image part in a text-only content list, say).
    first = max(problems, key=lambda problem: len(problem.get("loc", ())))
    if tuple(first.get("loc", ())) == ("body",) and first.get("type") in _NOT_AN_OBJECT:
        if not _declares_json(content_type or ""):
            # FastAPI reads a body as JSON only under a JSON content type; `curl -d` sends
            # application/x-www-form-urlencoded, and "must be a JSON object" would puzzle.
            return EdgeError(415, f"the request body must be JSON, sent with the header Content-Type: "
                             f"application/json (this request's: {content_type or 'none'})", None,
                             "unsupported_media_type")
        return EdgeError(400, "the request body must be a JSON object", None, "invalid_value")
    code = first.get("type") if first.get("type") in _MODEL_CODES else "invalid_value"
    message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    given = (first.get("ctx") or {}).get("param")
    if given:  # a check of the whole body names the place itself, and its message starts with it
        return EdgeError(400, message, given, code)
    param = ".".join(_field_path(first.get("loc", ()))) or None
    if param is None and ": " in message and " " not in message.split(": ", 1)[0]:
        param, message = message.split(": ", 1)  # model-level checks name their field first
    return EdgeError(400, f"{param}: {message}" if param else message, param, code)


def _declares_json(content_type: str) -> bool:
    """application/json or application/*+json, parameters aside (FastAPI's own rule)."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json"))


def _field_path(location: tuple) -> list[str]:
    """The location as the client wrote it: no "body", no union member or message-role tags."""
    path = []
    for part in location:
        text = str(part)
        is_union_member = "[" in text or text in _UNION_TAGS
        if text != "body" and not (is_union_member and path):
            path.append(text)
    return path


_UNION_TAGS = {"str", "int", "float", "bool", "system", "developer", "user", "assistant", "tool", "function-after",
               "message", "function_call", "function_call_output", "tool_use", "tool_result"}


def _anthropic(request: Request) -> bool:
    """Whether the route answers in Anthropic's error shape."""
    return request.url.path.startswith(ANTHROPIC_PREFIX)


def install_error_handlers(app: FastAPI) -> None:
    async def edge_error(request: Request, error: EdgeError) -> JSONResponse:
        return error.response(_anthropic(request))

    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        return from_validation(error, request.headers.get("content-type")).response(_anthropic(request))

    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        if error.status_code == 404:
            refusal = EdgeError(404, f"no route {request.method} {request.url.path}", code="unknown_route")
        elif error.status_code == 400:  # FastAPI's own, when Python's JSON reader fails (too deep a body, say)
            refusal = EdgeError(400, "the request body could not be read as JSON (not UTF-8, nested too deeply, "
                                "or a number too long)", None, "invalid_json")
        else:
            refusal = EdgeError(error.status_code, str(error.detail))
        return refusal.response(_anthropic(request))

    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        return EdgeError(500, f"internal error: {type(error).__name__}").response(_anthropic(request))

    app.add_exception_handler(EdgeError, edge_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
