"""Token log probabilities in the shapes OpenAI's endpoints use.

Chat: `{"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}], "refusal": null}`.
Completions (the legacy shape): `{tokens, token_logprobs, top_logprobs: [{token: logprob}], text_offset}`,
where `text_offset` counts characters of the choice's text (after the prompt, with echo).
A token is spelled by its bytes decoded as UTF-8 (a piece of a character shows as U+FFFD; `bytes`
is exact), and a control token (an end-of-turn among the alternatives) by its vocabulary text.
"""

from __future__ import annotations

from edge.engine.jobs import TokenLogprob
from edge.engine.llama_model import LlamaModel


class LogprobWriter:
    """Spells one request's logprobs; keeps, per choice, the text offset the legacy shape needs."""

    def __init__(self, model: LlamaModel, choices: int, first_offset: int = 0) -> None:
        self._model = model
        self._offsets = [first_offset] * choices

    def _spell(self, token: int) -> tuple[str, bytes]:
        piece = self._model.piece(token)
        if not piece:
            piece = self._model.token_text(token).encode()
        return piece.decode("utf-8", "replace"), piece

    def _token(self, token: int, logprob: float) -> dict:
        text, piece = self._spell(token)
        return {"token": text, "logprob": logprob, "bytes": list(piece)}

    def chat(self, entries: tuple[TokenLogprob, ...]) -> dict:
        content = [{**self._token(e.token, e.logprob), "top_logprobs": [self._token(t, lp) for t, lp in e.top]}
                   for e in entries]
        return {"content": content, "refusal": None}

    def legacy(self, index: int, entries: tuple[TokenLogprob, ...]) -> dict:
        tokens, offsets = [], []
        for entry in entries:
            text, _ = self._spell(entry.token)
            tokens.append(text)
            offsets.append(self._offsets[index])
            self._offsets[index] += len(text)
        return {"tokens": tokens, "token_logprobs": [e.logprob for e in entries],
                "top_logprobs": [{self._spell(t)[0]: lp for t, lp in e.top} for e in entries],
                "text_offset": offsets}
