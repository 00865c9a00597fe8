"""Greedy choice read off the logits in place (SamplerChain's fast path) picks what llama.cpp's own
greedy sampler picks, on real logits of the embedded model, and only pure greedy chains take it."""

from __future__ import annotations

import llama_cpp
import pytest

from edge.engine.config import EngineConfig, context_params
from edge.engine.llama_model import LlamaModel
from edge.engine.sampling import SamplerChain, SamplingParams
from support import EMBEDDED_GGUF

PROMPTS = ["The capital of France is", "1, 2, 3, 4,", "def hello_world():", "Roses are red, violets",
           "The opposite of hot is", "Once upon a time", "import numpy as", "Monday, Tuesday,"]
SEQUENCES = len(PROMPTS)


@pytest.fixture(scope="module")
def decoded():
    """A context whose last decode left logits for the last token of 8 prompts, its model, and the
    batch indices of those tokens."""
    model = LlamaModel(EMBEDDED_GGUF)
    ctx = llama_cpp.llama_init_from_model(model.ptr, context_params(EngineConfig(ctx_size=256, parallel=SEQUENCES, threads=2)))
    prompts = [model.tokenize(text) for text in PROMPTS]
    batch = llama_cpp.llama_batch_init(sum(map(len, prompts)), 0, SEQUENCES)
    batch.n_tokens = 0
    last_indices = []  # the batch index of each prompt's last token, the one that asks for logits
    for seq_id, prompt in enumerate(prompts):
        for position, token in enumerate(prompt):
            index = batch.n_tokens
            batch.token[index], batch.pos[index], batch.n_seq_id[index] = token, position, 1
            batch.seq_id[index][0], batch.logits[index] = seq_id, position == len(prompt) - 1
            batch.n_tokens += 1
        last_indices.append(batch.n_tokens - 1)
    assert llama_cpp.llama_decode(ctx, batch) == 0
    yield ctx, model, last_indices
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(ctx)
    model.close()


def _llama_greedy(ctx, index: int) -> int:
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
    try:
        return llama_cpp.llama_sampler_sample(chain, ctx, index)
    finally:
        llama_cpp.llama_sampler_free(chain)


def test_in_place_greedy_picks_llama_cpps_greedy_token(decoded):
    ctx, model, indices = decoded
    chain = SamplerChain(model, SamplingParams(temperature=0.0), seed=0, grammar=None)
    try:
        assert chain._greedy_row is not None  # the fast path is the one under test
        picked = [chain.sample(ctx, index) for index in indices]
    finally:
        chain.close()
    assert picked == [_llama_greedy(ctx, index) for index in indices]
    assert len(set(picked)) > 1  # different rows were read, not one row eight times


@pytest.mark.parametrize("params, grammar", [
    (SamplingParams(temperature=0.0, logit_bias=((1, 5.0),)), None),
    (SamplingParams(temperature=0.0, presence_penalty=0.5), None),
    (SamplingParams(temperature=0.0), 'root ::= "a"'),
    (SamplingParams(temperature=0.7), None),
])
def test_chains_that_change_logits_or_draw_go_through_llama_cpp(decoded, params, grammar):
    ctx, model, indices = decoded
    chain = SamplerChain(model, params, seed=1, grammar=grammar)
    try:
        assert chain._greedy_row is None
        assert 0 <= chain.sample(ctx, indices[0]) < model.n_vocab
    finally:
        chain.close()


def test_a_bias_that_moves_the_maximum_is_honoured(decoded):
    """The case the fast path must not take: a logit_bias at temperature 0 changes which token wins."""
    ctx, model, indices = decoded
    plain = _llama_greedy(ctx, indices[3])
    target = (plain + 1) % model.n_vocab
    chain = SamplerChain(model, SamplingParams(temperature=0.0, logit_bias=((target, 100.0),)), seed=0, grammar=None)
    try:
        assert chain.sample(ctx, indices[3]) == target
    finally:
        chain.close()
