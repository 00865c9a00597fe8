"""The FastAPI application, built around one already-loaded model (no module-level state)."""

from __future__ import annotations

from fastapi import FastAPI

from edge import __version__
from edge.api.errors import install_error_handlers
from edge.api.routes import health, v1
from edge.api.serving import ServingLayer
from edge.served import ServedModel


def create_app(served: ServedModel, api_keys: list[str]) -> FastAPI:
    app = FastAPI(title="edge", version=__version__)
    app.state.serving = ServingLayer(served)
    app.state.api_keys = list(api_keys)
    install_error_handlers(app)
    app.include_router(health)
    app.include_router(v1)
    return app
