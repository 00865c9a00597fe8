"""The model a server serves: weights, engine, chat template, context and price, loaded once."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from edge.cards import ModelCard, resolve_model
from edge.chat.template import ChatTemplate
from edge.engine.config import EngineConfig
from edge.engine.engine import Engine
from edge.engine.llama_model import LlamaModel
from edge.engine.supervised import ChildSpec, SupervisedEngine
from edge.plan.cpu_kernels import KernelChoice
from edge.plan.placement import cpu_kernels, load_options
from edge.settings import DEFAULT_CTX_CAP, Settings

log = logging.getLogger("edge")

# Used only when neither the GGUF nor its card has a chat template.
FALLBACK_TEMPLATE = (
    "{% for m in messages %}{{ m.role | capitalize }}: {{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


@dataclass
class ServedModel:
    id: str
    aliases: frozenset[str]
    model: LlamaModel
    engine: Engine | SupervisedEngine
    template: ChatTemplate
    ctx_size: int
    price_per_mtoken: float
    created: int
    kernels: KernelChoice

    @classmethod
    def load(cls, settings: Settings, on_engine_death: Callable[[BaseException], None] | None = None) -> ServedModel:
        """Load the model and start its engine; `on_engine_death` is told (from the engine thread) if
        the in-process engine's loop dies."""
        path, card = resolve_model(settings.model, settings.models_dir)
        # The plan for --n-gpu-layers auto needs the KV size before the model (and its context) exist.
        planned_ctx = settings.ctx_size or min(card.context_length if card else DEFAULT_CTX_CAP, DEFAULT_CTX_CAP)
        kernels = cpu_kernels(settings, path)
        log.info("%s", kernels.line())
        options = load_options(settings, path, planned_ctx * settings.parallel, kernels.kernel)
        endpoints = settings.rpc_endpoints
        # Across RPC workers the weights live in a supervised child process (llama.cpp aborts
        # when a worker goes away); this process keeps only the vocabulary, for prompts.
        model = LlamaModel(path, replace(options, vocab_only=True) if endpoints else options)
        ctx_size = settings.ctx_size or min(_context_length(card, model), DEFAULT_CTX_CAP)
        if ctx_size > model.n_ctx_train:
            log.warning("context %d is beyond the %d the model was trained on", ctx_size, model.n_ctx_train)
        config = EngineConfig(ctx_size=ctx_size, parallel=settings.parallel, threads=settings.threads,
                              cache_type_k=settings.cache_type, cache_type_v=settings.cache_type,
                              flash_attn=settings.flash_attn, max_queue=settings.max_queue,
                              queue_timeout=settings.queue_timeout or None,
                              speculative=settings.speculative_config)
        if endpoints:
            # All layers go to the workers unless told otherwise: that is the point of --rpc.
            remote_options = replace(options, n_gpu_layers=options.n_gpu_layers or -1)
            engine = SupervisedEngine(ChildSpec(path, remote_options, config, tuple(endpoints), settings.log_level.upper()))
        else:
            engine = Engine(model, config, on_engine_death)
        template_source = model.metadata("tokenizer.chat_template") or (card and card.chat_template)
        if not template_source:
            log.warning("%s has no chat template: using a plain 'Role: text' format", path.name)
        template = ChatTemplate(template_source or FALLBACK_TEMPLATE,
                                model.token_text(model.bos_id), model.token_text(model.eos_id))
        served_id = card.name if card else path.stem
        aliases = {served_id, path.name, path.stem} | ({card.hub_id} if card else set())
        price = settings.price if settings.price is not None else (card.price_per_mtoken if card else 0.0)
        log.info("serving %s from %s (context %d per request, %d parallel)", served_id, path, ctx_size, settings.parallel)
        return cls(served_id, frozenset(aliases), model, engine, template, ctx_size, price, int(time.time()), kernels)

    def tokenize_prompt(self, text: str) -> list[int]:
        """Tokens of a rendered prompt; BOS is added only if the model wants it and the text lacks it."""
        bos_text = self.template.bos_token
        add_bos = self.model.add_bos and not (bos_text and text.startswith(bos_text))
        tokens = self.model.tokenize(text, add_special=False)
        return [self.model.bos_id, *tokens] if add_bos else tokens

    def close(self) -> None:
        self.engine.close()
        self.model.close()


def _context_length(card: ModelCard | None, model: LlamaModel) -> int:
    return min(card.context_length, model.n_ctx_train) if card else model.n_ctx_train
