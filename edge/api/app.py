"""The FastAPI application, built around one already-loaded model (no module-level state)."""

from __future__ import annotations

from fastapi import FastAPI

from edge import __version__
from edge.api.errors import install_error_handlers
from edge.api.routes import health, v1
from edge.api.serving import ServingLayer
from edge.served import ServedModel
from edge.web import webui as web_page


def create_app(served: ServedModel, api_keys: list[str], webui: bool = True) -> FastAPI:
    app = FastAPI(title="edge", version=__version__)
    app.state.serving = ServingLayer(served)
    app.state.api_keys = list(api_keys)
    install_error_handlers(app)
    app.include_router(health)
    app.include_router(v1)
    if webui:  # the chat page at GET / (edge/web); `edge serve --no-webui` leaves / a 404
        app.include_router(web_page)
    return app
