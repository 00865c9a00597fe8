"""Fixtures of the lifecycle tier: the real app and HTTP server (uvicorn on 127.0.0.1, in a thread),
the real chat template and tokenizer (a vocabulary-only load of the embedded model), a fake engine."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from support import EMBEDDED_GGUF, free_port

from edge.api.app import create_app
from edge.chat.template import ChatTemplate
from edge.engine.llama_model import LlamaModel, LoadOptions
from edge.plan.cpu_kernels import KernelChoice
from edge.served import ServedModel

from .fake import MODEL_ID, FakeEngine, LiveApp


@pytest.fixture(scope="session")
def vocab_model() -> Iterator[LlamaModel]:
    model = LlamaModel(EMBEDDED_GGUF, LoadOptions(vocab_only=True))
    yield model
    model.close()


@pytest.fixture()
def live(vocab_model: LlamaModel) -> Iterator[LiveApp]:
    """A fresh fake engine behind a real HTTP server for each test."""
    engine = FakeEngine()
    template = ChatTemplate(vocab_model.metadata("tokenizer.chat_template"), vocab_model.token_text(vocab_model.bos_id),
                            vocab_model.token_text(vocab_model.eos_id))
    served = ServedModel(MODEL_ID, frozenset({MODEL_ID}), vocab_model, engine, template, 1024, 0.0, 0,
                         KernelChoice("plain", "plain", (), True, 0.0))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(served, []), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.01)
    yield LiveApp(f"http://127.0.0.1:{port}", engine)
    server.should_exit = True
    thread.join(timeout=10)
