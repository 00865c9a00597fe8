"""The arithmetic that "batched output equals solo output" and exact speculative verification rest
on: with edge's context (a KV stream per sequence, flash attention `auto`), a token's logits are the
same bit for bit however its sequence was batched, while a prompt is read in pieces under 64 tokens
and a sequence holds under 256 cells (README, "Speculative decoding": past those, ggml-cpu's flash
attention takes other kernels). A llama.cpp upgrade that changes this fails here, by name, rather
than as a rare near-tie flip in the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator

import llama_cpp
import numpy as np
import pytest
from support import EMBEDDED_GGUF

from edge.engine.batch import BatchWriter, decode_prompt
from edge.engine.config import EngineConfig, context_params
from edge.engine.llama_model import LlamaModel

PROMPT = "Repeat this text exactly, once:\nThe fox jumps over the dog, the farmer counts his sheep."
OTHER = "Count from 1 to 40, twice."
TOKENS = 12
BATCH = 256


class Context:
    """A llama context as the engine makes it, with one batch to fill."""

    def __init__(self, model: LlamaModel) -> None:
        self.model = model
        self.ctx = llama_cpp.llama_init_from_model(model.ptr, context_params(EngineConfig(ctx_size=512, parallel=4)))
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(BATCH, 0, 4)

    def decode(self, items: list[tuple[int, int, int]]) -> list[np.ndarray]:
        """Decode (token, position, sequence) items as one batch; the logits of each, in order."""
        writer = BatchWriter(self.batch, BATCH)
        indices = [writer.add(token, position, [seq], True) for token, position, seq in items]
        assert llama_cpp.llama_decode(self.ctx, self.batch) == 0
        return [self.logits(index) for index in indices]

    def logits(self, index: int) -> np.ndarray:
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.ctx, index), (self.model.n_vocab,)).copy()

    def read(self, tokens: list[int], seq: int, piece: int) -> np.ndarray:
        """Forget the sequence, read `tokens` in pieces of `piece`; the last token's logits."""
        llama_cpp.llama_memory_seq_rm(self.memory, seq, -1, -1)
        for start in range(0, len(tokens), piece):
            assert decode_prompt(self.ctx, self.batch, BATCH, tokens[start:start + piece], seq, start) == 0
        return self.logits(-1)

    def close(self) -> None:
        llama_cpp.llama_batch_free(self.batch)
        llama_cpp.llama_free(self.ctx)


@pytest.fixture(scope="module")
def context() -> Iterator[Context]:
    model = LlamaModel(EMBEDDED_GGUF)
    context = Context(model)
    yield context
    context.close()
    model.close()


@pytest.fixture(scope="module")
def prompt(context: Context) -> list[int]:
    tokens = context.model.tokenize(PROMPT)
    assert len(tokens) < 64 and len(tokens) + TOKENS < 256  # on the one-row path, by construction
    return tokens


@pytest.fixture(scope="module")
def alone(context: Context, prompt: list[int]) -> tuple[list[int], list[np.ndarray]]:
    """Greedy tokens after the prompt read whole, decoded one at a time, and their logits."""
    logits = context.read(prompt, 0, len(prompt))
    tokens, rows = [], []
    for offset in range(TOKENS):
        tokens.append(int(logits.argmax()))
        logits = context.decode([(tokens[-1], len(prompt) + offset, 0)])[0]
        rows.append(logits)
    return tokens, rows


def test_tokens_decoded_together_like_drafts_give_the_same_logits(context, prompt, alone):
    tokens, rows = alone
    context.read(prompt, 0, len(prompt))
    together = context.decode([(token, len(prompt) + offset, 0) for offset, token in enumerate(tokens)])
    assert [np.array_equal(a, b) for a, b in zip(together, rows)] == [True] * TOKENS


def test_a_sequence_beside_another_gives_the_same_logits(context, prompt, alone):
    tokens, rows = alone
    other = context.model.tokenize(OTHER)
    other_logits = context.read(other, 1, len(other))
    context.read(prompt, 0, len(prompt))
    beside = []
    for offset, token in enumerate(tokens):
        mine, other_logits = context.decode([(token, len(prompt) + offset, 0),
                                             (int(other_logits.argmax()), len(other) + offset, 1)])
        beside.append(mine)
    assert [np.array_equal(a, b) for a, b in zip(beside, rows)] == [True] * TOKENS


@pytest.mark.parametrize("piece", [1, 7, 40])
def test_a_prompt_read_in_pieces_gives_the_same_logits(context, prompt, alone, piece):
    tokens, rows = alone
    context.read(prompt, 2, piece)
    after = [context.decode([(token, len(prompt) + offset, 2)])[0] for offset, token in enumerate(tokens)]
    assert [np.array_equal(a, b) for a, b in zip(after, rows)] == [True] * TOKENS
