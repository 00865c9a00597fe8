"""GET / and GET /web/<file>: the chat page's static files, read from this package.

No API key is needed for these (like /health and /metrics): the page itself holds no secret, and
every /v1 call it makes sends the key the user typed into it.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response

from edge.api.errors import EdgeError

# The files the page is made of, with their media types: a fixed list, so that no request path
# ever reaches the file system.
FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "chat.js": "text/javascript; charset=utf-8",
    "markdown.js": "text/javascript; charset=utf-8",
    "status.js": "text/javascript; charset=utf-8",
    "store.js": "text/javascript; charset=utf-8",
}

# Defence in depth behind the renderer (which never parses model text as HTML): scripts, styles and
# connections only from this server, no inline script, no plugins, no framing by other sites.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

webui = APIRouter()


@lru_cache(maxsize=None)
def _read(name: str) -> bytes:
    return resources.files(__package__).joinpath(name).read_bytes()


def _file(name: str) -> Response:
    headers = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
               "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}
    return Response(_read(name), media_type=FILES[name], headers=headers)


@webui.get("/", include_in_schema=False)
def index() -> Response:
    return _file("index.html")


@webui.get("/web/{name}", include_in_schema=False)
def static_file(name: str) -> Response:
    if name not in FILES:
        raise EdgeError(404, f"no such file: /web/{name}", None, "not_found")
    return _file(name)
