"""Log probabilities of generated tokens, read from the logits of the decode that produced them.

We report the model's own distribution, as OpenAI does: a log-softmax of the raw logits, before
penalties, logit_bias, the grammar, truncation and temperature. (llama-server reports the
probabilities after its samplers, so a token a grammar forced can show 1.0 there.) Nothing here
runs unless a request asks for logprobs; when it does, it is one pass over the vocabulary per
token (numpy, well under a millisecond for 49k tokens).
"""

from __future__ import annotations

import llama_cpp
import numpy as np

from edge.engine.jobs import TokenLogprob

MAX_TOP_LOGPROBS = 20  # the OpenAI API's limit for chat; /v1/completions allows 5


def token_logprob(ctx: llama_cpp.llama_context_p, output_index: int, n_vocab: int, token: int,
                  top: int) -> TokenLogprob:
    """`token`'s log probability at output `output_index` of the last decode, and the `top` most
    likely tokens there. Call it before the next decode overwrites the logits."""
    if not 0 <= top <= MAX_TOP_LOGPROBS:
        raise ValueError(f"top must be in [0, {MAX_TOP_LOGPROBS}], got {top}")
    pointer = llama_cpp.llama_get_logits_ith(ctx, output_index)
    logits = np.ctypeslib.as_array(pointer, shape=(n_vocab,)).astype(np.float64)
    peak = logits.max()
    log_total = peak + np.log(np.exp(logits - peak).sum())
    alternatives: tuple[tuple[int, float], ...] = ()
    if top:
        best = np.argpartition(logits, -top)[-top:]
        best = best[np.argsort(-logits[best], kind="stable")]
        alternatives = tuple((int(i), float(logits[i] - log_total)) for i in best)
    return TokenLogprob(token, float(logits[token] - log_total), alternatives)
