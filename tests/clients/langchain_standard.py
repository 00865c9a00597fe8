"""LangChain's own standard chat-model integration tests (langchain-tests), with ChatOpenAI pointed
at a real `edge serve` of the embedded model. Run by `make test-clients`, not by `make test`: the
file name keeps pytest from collecting it, and it needs the `clients` extra.

The flags say what edge serves: tool calling, tool_choice, structured output, JSON mode and usage
(streamed too) on; images, audio, video and PDF off (the models we serve read text). A model name
other than the served one is not an override: a server serves one model."""

from __future__ import annotations

import pytest
from langchain_openai import ChatOpenAI
from langchain_tests.integration_tests import ChatModelIntegrationTests
from support import MODEL


class TestEdgeChatOpenAI(ChatModelIntegrationTests):
    base_url = ""

    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def _edge_server(cls, server) -> None:
        """The session's `edge serve` (tests/conftest.py), read before any model is built."""
        cls.base_url = f"{server.url}/v1"

    @property
    def chat_model_class(self) -> type[ChatOpenAI]:
        return ChatOpenAI

    @property
    def chat_model_params(self) -> dict:
        # Two CPU cores running a whole suite: a generous timeout, and no retries that would hide a failure.
        return {"model": MODEL, "base_url": self.base_url, "api_key": "unused", "seed": 1, "timeout": 300,
                "max_retries": 0, "stream_usage": True}

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_image_inputs(self) -> bool:
        return False

    @property
    def supports_image_urls(self) -> bool:
        return False

    @property
    def supports_audio_inputs(self) -> bool:
        return False

    @property
    def supports_video_inputs(self) -> bool:
        return False

    @property
    def supports_pdf_inputs(self) -> bool:
        return False

    @property
    def supports_image_tool_message(self) -> bool:
        return False

    @property
    def supports_pdf_tool_message(self) -> bool:
        return False

    @property
    def supports_model_override(self) -> bool:
        return False
