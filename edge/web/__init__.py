"""The chat page at GET /: static files shipped in this package (no build step, nothing fetched)."""

from edge.web.router import webui

__all__ = ["webui"]
