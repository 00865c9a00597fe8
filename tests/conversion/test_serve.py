"""A checkpoint we converted serves chat through `edge serve`, end to end."""

from __future__ import annotations

import openai
from support import Server


def test_converted_bf16_serves_chat(converted, tmp_path):
    gguf = converted("smollm2", "BF16")
    server = Server(["--model", str(gguf), "--ctx-size", "512"], {}, tmp_path / "serve.log")
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=300)
        [model] = client.models.list().data
        assert model.id == gguf.stem
        reply = client.chat.completions.create(model=model.id, temperature=0, max_tokens=40,
                                               messages=[{"role": "user", "content": "What is the capital of France?"}])
        choice = reply.choices[0]
        # The converted GGUF carries SmolLM2's ChatML template: a well-formed turn ends on <|im_end|>.
        assert choice.finish_reason == "stop" and choice.message.content.strip()
        assert "<|im_end|>" not in choice.message.content and "<|im_start|>" not in choice.message.content
        streamed = client.chat.completions.create(model=model.id, temperature=0, max_tokens=40, stream=True,
                                                  messages=[{"role": "user", "content": "What is the capital of France?"}])
        assert "".join(c.choices[0].delta.content or "" for c in streamed) == choice.message.content
    finally:
        server.stop()
