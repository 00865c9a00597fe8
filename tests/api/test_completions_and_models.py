"""POST /v1/completions, GET /v1/models, GET /health, and the priced, key-protected server."""

from __future__ import annotations

import httpx
import openai
import pytest
from support import API_KEY, MODEL, PRICE, PRICED_MODEL

COUNT = "1, 2, 3, 4, 5,"


def test_completion_shape_and_default_max_tokens(http):
    body = http.post("/v1/completions", json={"model": MODEL, "prompt": COUNT, "temperature": 0}).json()
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion"
    [choice] = body["choices"]
    assert choice["text"].startswith(" 6") and choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 16  # the OpenAI default for this endpoint


def test_completion_stream_equals_whole(client):
    whole = client.completions.create(model=MODEL, prompt=COUNT, temperature=0, max_tokens=20)
    chunks = list(client.completions.create(model=MODEL, prompt=COUNT, temperature=0, max_tokens=20, stream=True))
    assert "".join(chunk.choices[0].text for chunk in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_completion_stop_and_n(client):
    response = client.completions.create(model=MODEL, prompt=COUNT, temperature=0, max_tokens=30, stop=", 9", n=2)
    assert [c.text for c in response.choices] == [" 6, 7, 8"] * 2
    assert {c.finish_reason for c in response.choices} == {"stop"}


def test_models_lists_the_served_model(client):
    [model] = client.models.list().data
    assert model.id == MODEL and model.object == "model"


def test_health(http):
    assert http.get("/health").json() == {"status": "ok", "model": MODEL}


def test_hub_id_names_the_same_model(http):
    response = http.post("/v1/completions", json={"model": "HuggingFaceTB/SmolLM2-135M-Instruct", "prompt": COUNT,
                                                  "max_tokens": 1})
    assert response.status_code == 200 and response.json()["model"] == MODEL


@pytest.fixture(scope="module")
def priced_client(priced_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{priced_server.url}/v1", api_key=API_KEY, max_retries=0, timeout=60)


def test_estimated_cost_uses_the_card_price(priced_client):
    response = priced_client.chat.completions.create(model=PRICED_MODEL, messages=[{"role": "user", "content": "Hi"}],
                                                     max_tokens=10, temperature=0)
    usage = response.model_dump()["usage"]
    assert usage["estimated_cost"] == pytest.approx(usage["total_tokens"] * PRICE / 1e6)
    assert usage["estimated_cost"] > 0


def test_card_context_length_bounds_requests(priced_client):
    [model] = priced_client.models.list().data
    assert model.id == PRICED_MODEL and model.model_dump()["context_length"] == 512


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {API_KEY}"}])
def test_wrong_or_missing_key_is_401(priced_server, headers):
    for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions")):
        response = httpx.request(method, priced_server.url + path, headers=headers,
                                 json={"model": PRICED_MODEL, "messages": [{"role": "user", "content": "Hi"}]})
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"


def test_any_configured_key_works_and_health_is_open(priced_server):
    assert httpx.get(priced_server.url + "/health").status_code == 200
    assert httpx.get(priced_server.url + "/v1/models", headers={"Authorization": "Bearer other-key"}).status_code == 200
