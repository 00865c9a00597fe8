"""Thin handlers: validate (pydantic), prepare (serving layer), answer whole or streamed."""

from __future__ import annotations

import asyncio
import secrets

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse

from edge.api.errors import EdgeError
from edge.api.protocol import ChatCompletionRequest, CompletionRequest
from edge.api.responses import complete, stream
from edge.api.serving import Prepared, ServingLayer
from edge.engine.supervised import RETRY_AFTER_SECONDS


def serving_layer(request: Request) -> ServingLayer:
    return request.app.state.serving


def require_api_key(request: Request) -> None:
    """With keys configured, every /v1 call needs `Authorization: Bearer <one of them>`."""
    keys: list[str] = request.app.state.api_keys
    if not keys:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not any(secrets.compare_digest(token.strip(), key) for key in keys):
        raise EdgeError(401, "missing or invalid API key: send Authorization: Bearer <key>", None, "invalid_api_key")


health = APIRouter()
v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])


@health.get("/health")
async def get_health(layer: ServingLayer = Depends(serving_layer)) -> dict:
    if not layer.served.engine.ready:
        raise EdgeError(503, "the model is loading or its RPC workers are unreachable", None,
                        "engine_unavailable", RETRY_AFTER_SECONDS)
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
    return await _answer(request, layer, layer.prepare_chat(body), body.stream)


@v1.post("/completions")
async def completions(request: Request, body: CompletionRequest, layer: ServingLayer = Depends(serving_layer)):
    return await _answer(request, layer, layer.prepare_completion(body), body.stream)


async def _answer(request: Request, layer: ServingLayer, prepared: Prepared, streamed: bool):
    start = asyncio.ensure_future(layer.start(prepared))
    generation = await _unless_client_leaves(request, start)
    if isinstance(generation, Response):
        return generation
    if streamed:  # from here on the streaming response notices a disconnect by itself
        return StreamingResponse(stream(layer, prepared, generation), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    whole = asyncio.ensure_future(complete(layer, prepared, generation))
    try:
        return await _unless_client_leaves(request, whole)
    finally:
        generation.cancel()  # a no-op once finished; frees the slot when the client left


async def _unless_client_leaves(request: Request, work: asyncio.Future):
    """The result of `work`; if the client disconnects first, `work` is cancelled (which
    cancels its generation), so a queued or running request stops holding the engine."""
    while True:
        done, _ = await asyncio.wait({work}, timeout=0.5)
        if done:
            return work.result()
        if await request.is_disconnected():
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
            return Response(status_code=499)  # nobody reads it: nginx's "client closed request"
