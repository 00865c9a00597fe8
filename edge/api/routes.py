"""Thin handlers: validate (pydantic), prepare (serving layer), answer whole or streamed.

Three surfaces share one path: each request model converts itself into a neutral conversation
(edge/api/conversation.py), the serving core prepares the engine request, and the surface's own
module shapes the updates (openai_chat, openai_responses, anthropic_messages)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from edge.api import anthropic_messages, openai_chat, openai_responses
from edge.api.anthropic_messages_protocol import CountTokensRequest, MessagesRequest
from edge.api.errors import EdgeError
from edge.api.lifecycle import OwnedStream, RequestLife, unless_client_leaves
from edge.api.openai_responses_protocol import ResponsesRequest
from edge.api.protocol import ChatCompletionRequest, CompletionRequest
from edge.api.serving import Prepared, ServingLayer
from edge.engine.jobs import Generation

# How a surface shapes one generation: whole (a JSON body) and streamed (server-sent events).
Whole = Callable[[ServingLayer, Prepared, Generation], Awaitable[dict]]
Streamed = Callable[[ServingLayer, Prepared, Generation], AsyncIterator[str]]


def serving_layer(request: Request) -> ServingLayer:
    return request.app.state.serving


def require_api_key(request: Request) -> None:
    """With keys configured, every /v1 call needs one of them, as `Authorization: Bearer <key>` (OpenAI's
    clients) or `x-api-key: <key>` (Anthropic's); either header may carry it on any route."""
    keys: list[str] = request.app.state.api_keys
    if not keys:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    offered = [token.strip()] if scheme.lower() == "bearer" else []
    offered += [request.headers["x-api-key"].strip()] if "x-api-key" in request.headers else []
    if not any(secrets.compare_digest(given.encode(), key.encode()) for given in offered for key in keys):
        raise EdgeError(401, "missing or invalid API key: send Authorization: Bearer <key> or x-api-key: <key>",
                        None, "invalid_api_key")


health = APIRouter()
v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])


@health.get("/health")
async def get_health(layer: ServingLayer = Depends(serving_layer)) -> dict:
    engine = layer.served.engine
    if not engine.ready:
        raise EdgeError(503, "the engine is not ready: loading, restarting, or its RPC workers are unreachable",
                        None, "engine_unavailable", engine.retry_after())
    return {"status": "ok", "model": layer.served.id}


@health.get("/metrics")
def get_metrics(layer: ServingLayer = Depends(serving_layer)) -> Response:
    """Prometheus text format, from the engine's own registry (a worker thread: with --rpc it
    waits for the engine process's figures)."""
    return Response(layer.served.engine.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


@v1.get("/models")
async def list_models(layer: ServingLayer = Depends(serving_layer)) -> dict:
    served = layer.served
    return {"object": "list", "data": [{"id": served.id, "object": "model", "created": served.created,
                                        "owned_by": "edge", "context_length": served.ctx_size}]}


@v1.post("/chat/completions")
async def chat_completions(request: Request, body: ChatCompletionRequest,
                           layer: ServingLayer = Depends(serving_layer)):
    return await _answer(request, layer, lambda: layer.prepare_chat(body), body.stream,
                         openai_chat.complete, openai_chat.stream)


@v1.post("/completions")
async def completions(request: Request, body: CompletionRequest,
                      layer: ServingLayer = Depends(serving_layer)):
    return await _answer(request, layer, lambda: layer.prepare_completion(body), body.stream,
                         openai_chat.complete, openai_chat.stream)


@v1.post("/responses")
async def responses(request: Request, body: ResponsesRequest, layer: ServingLayer = Depends(serving_layer)):
    conversation = body.conversation
    return await _answer(request, layer, lambda: layer.prepare(conversation), body.stream,
                         lambda *args: openai_responses.whole(*args, body),
                         lambda *args: openai_responses.stream(*args, body))


@v1.post("/messages")
async def messages(request: Request, body: MessagesRequest, layer: ServingLayer = Depends(serving_layer)):
    conversation = body.conversation
    return await _answer(request, layer, lambda: layer.prepare(conversation), body.stream,
                         anthropic_messages.whole, anthropic_messages.stream)


@v1.post("/messages/count_tokens")
async def count_tokens(request: Request, body: CountTokensRequest, layer: ServingLayer = Depends(serving_layer)):
    counted = await unless_client_leaves(request, asyncio.to_thread(layer.count_tokens, body.conversation))
    return counted if isinstance(counted, Response) else {"input_tokens": counted}


async def _answer(request: Request, layer: ServingLayer, prepare: Callable[[], Prepared], streamed: bool,
                  whole: Whole, events: Streamed):
    """validate (done by pydantic) -> prepare (a worker thread) -> admit -> stream or answer whole."""
    prepared = await unless_client_leaves(request, asyncio.to_thread(prepare))
    if isinstance(prepared, Response):
        return prepared
    if not streamed:  # nothing reads the answer before it is whole: the engine hands it over at its end
        prepared = replace(prepared, generation=replace(prepared.generation, stream=False))
    life = RequestLife(layer, prepared)
    handed_over = False
    try:
        if streamed:
            # Admission first, so that a refusal or a full queue is a plain HTTP error.
            admitted = await unless_client_leaves(request, life.admit())
            if isinstance(admitted, Response):
                return admitted
            handed_over = True  # from here the stream's own finally closes the life
            return OwnedStream(events(layer, prepared, admitted), life.close)
        return await unless_client_leaves(request, _whole(layer, life, whole))
    finally:
        if not handed_over:
            life.close()


async def _whole(layer: ServingLayer, life: RequestLife, whole: Whole) -> dict:
    generation = await life.admit()
    return await whole(layer, life.prepared, generation)
