"""The chat page's HTTP side, in process (no model, no browser): what GET / and /web/* serve, that
they need no key while /v1 does, that nothing is fetched from elsewhere, and `--no-webui`."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from fastapi.testclient import TestClient
from support import Server

from edge.api.app import create_app
from edge.web.router import CSP, FILES

WEB = Path(str(resources.files("edge.web")))
KEY = "sk-page-key"


def app_client(api_keys: list[str], webui: bool = True) -> TestClient:
    """The real app over a stand-in model: these routes never reach the engine, except /metrics."""
    engine = SimpleNamespace(ready=True, metrics=SimpleNamespace(render=lambda: b"edge_busy_slots 0.0\n"))
    served = SimpleNamespace(engine=engine, id="m", aliases=frozenset({"m"}), created=0, ctx_size=256)
    return TestClient(create_app(served, api_keys, webui=webui), raise_server_exceptions=False)


def test_the_page_and_its_files_are_served_with_a_strict_policy() -> None:
    http = app_client([])
    page = http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == CSP and "script-src 'self'" in CSP
    for name in re.findall(r'(?:src|href)="/web/([^"]+)"', page.text):
        assert name in FILES, f"index.html links {name}, which the router does not serve"
    for name, media_type in FILES.items():
        answer = http.get(f"/web/{name}")
        assert answer.status_code == 200, name
        assert answer.headers["content-type"] == media_type
        assert answer.headers["x-content-type-options"] == "nosniff"


def test_unknown_and_traversing_paths_are_404() -> None:
    http = app_client([])
    for path in ("/web/router.py", "/web/__init__.py", "/web/..%2frouter.py", "/web/nope.js"):
        answer = http.get(path)
        assert answer.status_code == 404, path
        assert "error" in answer.json()  # OpenAI's error shape, as every other 404


def test_every_shipped_file_is_served_and_every_served_file_ships() -> None:
    shipped = {path.name for path in WEB.iterdir() if path.suffix in (".html", ".js", ".css")}
    assert shipped == set(FILES)


def test_nothing_is_fetched_from_another_host() -> None:
    """No CDN, fonts or analytics: every URL in the page's files is this server's (or an XML namespace)."""
    for name in FILES:
        text = (WEB / name).read_text()
        for url in re.findall(r"https?://[^\s\"'`)]+", text):
            assert url == "http://www.w3.org/2000/svg", f"{name} refers to {url}"
        assert not re.search(r"""(?:src|href|url\()\s*=?\s*["']?//""", text), f"{name}: a protocol-relative URL"
        assert "@import" not in text and "importScripts" not in text, name


def test_page_and_metrics_need_no_key_but_v1_does() -> None:
    http = app_client([KEY])
    assert http.get("/").status_code == 200
    assert http.get("/web/app.js").status_code == 200
    assert http.get("/metrics").status_code == 200
    assert http.get("/v1/models").status_code == 401
    assert http.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_without_the_webui_the_page_is_a_404_and_the_api_stays() -> None:
    http = app_client([], webui=False)
    assert http.get("/").status_code == 404
    assert http.get("/web/app.js").status_code == 404
    assert http.get("/v1/models").status_code == 200


def test_edge_serve_no_webui(tmp_path: Path) -> None:
    """The flag as users type it, on a real `edge serve`."""
    server = Server(["--ctx-size", "256", "--no-webui"], {}, tmp_path / "serve.log")
    try:
        assert httpx.get(f"{server.url}/", timeout=30).status_code == 404
        assert httpx.get(f"{server.url}/health", timeout=30).status_code == 200
    finally:
        server.stop()


@pytest.mark.parametrize("path", ["/", "/web/app.js"])
def test_a_real_server_serves_the_page_by_default(server: Server, path: str) -> None:
    assert httpx.get(f"{server.url}{path}", timeout=30).status_code == 200
