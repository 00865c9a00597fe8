"""The engine: the only code that runs llama.cpp generation.

One llama context with `parallel` sequence slots and a unified KV cache lives on one thread. Each
step of its loop puts into one batch the next token of every running sequence plus a chunk of any
prompt still being read, decodes once, then samples every sequence that asked for logits with its
own sampler chain. Requests join and leave between steps, so several are served at once; the two
continuations of an n=2 request share their prompt's KV cells (the prompt is decoded once, tagged
with both sequence ids).
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import os
import queue
import random
import threading
from collections import deque
from dataclasses import dataclass

import llama_cpp

from edge.engine.jobs import (
    ChoiceFinished, Generation, GenerationDone, GenerationFailed, GenerationHandle, GenerationRequest, TextDelta,
)
from edge.engine.llama_model import LlamaModel, ModelLoadError
from edge.engine.sampling import SamplerChain
from edge.engine.stops import StopMatcher

log = logging.getLogger("edge.engine")


_CACHE_TYPES = {"f16": llama_cpp.GGML_TYPE_F16, "q8_0": llama_cpp.GGML_TYPE_Q8_0, "q4_0": llama_cpp.GGML_TYPE_Q4_0}
_FLASH_ATTN = {"auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO, "on": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
               "off": llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED}


@dataclass(frozen=True)
class EngineConfig:
    """How the context is sized: `ctx_size` tokens per request, `parallel` sequences at once."""

    ctx_size: int
    parallel: int = 2
    n_batch: int = 512
    threads: int | None = None
    cache_type_k: str = "f16"  # f16, q8_0 or q4_0 (a quantized V cache needs flash attention)
    cache_type_v: str = "f16"
    flash_attn: str = "auto"  # auto, on or off

    def __post_init__(self) -> None:
        if self.ctx_size < 16:
            raise ValueError(f"context size must be at least 16 tokens, got {self.ctx_size}")
        if self.parallel < 1:
            raise ValueError(f"parallel must be at least 1, got {self.parallel}")


def check_fits(request: GenerationRequest, config: EngineConfig) -> None:
    """Raise ValueError when `request` could never run on an engine configured as `config`."""
    if not request.prompt_tokens:
        raise ValueError("the prompt is empty")
    if request.n > config.parallel:
        raise ValueError(f"n={request.n} needs the server started with --parallel {request.n} or more")
    if request.kv_cells() > config.ctx_size * config.parallel:
        raise ValueError(f"the request needs {request.kv_cells()} KV cells; the server has {config.ctx_size * config.parallel}")


class _Sequence:
    """One continuation: its KV sequence id, sampler chain, detokenizer and stop matcher."""

    def __init__(self, job: _Job, index: int, sampler: SamplerChain) -> None:
        self.job = job
        self.index = index
        self.sampler = sampler
        self.seq_id = -1
        self.position = 0
        self.last_token = -1
        self.generated = 0
        self.done = False
        self.matcher = StopMatcher(job.request.stop)
        # Tokens may end inside a multi-byte character: decode bytes incrementally.
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")


class _Job:
    """A request inside the engine: its prompt cursor and its sequences."""

    def __init__(self, generation: GenerationHandle, model: LlamaModel) -> None:
        self.generation = generation
        self.request = generation.request
        self.prompt_read = 0
        base_seed = self.request.seed if self.request.seed is not None else random.getrandbits(31)
        self.sequences: list[_Sequence] = []
        try:
            for index in range(self.request.n):
                chain = SamplerChain(model, self.request.sampling, base_seed + index, self.request.grammar)
                self.sequences.append(_Sequence(self, index, chain))
        except Exception:
            self.close_samplers()
            raise

    @property
    def prefilled(self) -> bool:
        return self.prompt_read == len(self.request.prompt_tokens)

    @property
    def live(self) -> list[_Sequence]:
        return [seq for seq in self.sequences if not seq.done]

    def close_samplers(self) -> None:
        for seq in self.sequences:
            seq.sampler.close()


class Engine:
    """Owns the llama context and the thread that decodes on it."""

    def __init__(self, model: LlamaModel, config: EngineConfig) -> None:
        self.model = model
        self.config = config
        self.kv_capacity = config.ctx_size * config.parallel
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = self.kv_capacity
        params.n_batch = params.n_ubatch = config.n_batch
        params.n_seq_max = config.parallel
        params.kv_unified = True  # sequences share one cache: an n=2 prompt is stored once
        params.n_threads = params.n_threads_batch = config.threads or os.cpu_count() or 1
        params.no_perf = True
        params.type_k, params.type_v = _CACHE_TYPES[config.cache_type_k], _CACHE_TYPES[config.cache_type_v]
        params.flash_attn_type = _FLASH_ATTN[config.flash_attn]
        self._ctx = llama_cpp.llama_init_from_model(model.ptr, params)
        if not self._ctx:
            raise ModelLoadError("llama.cpp could not create a context (out of memory?)")
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_init(config.n_batch, 0, config.parallel)
        self._inbox: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="edge-engine", daemon=True)
        self._thread.start()

    ready = True  # an in-process engine is usable for as long as it exists

    def submit(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop) -> Generation:
        """Queue `request`; raises ValueError when it can never run on this engine."""
        generation = Generation(request, loop)
        self.enqueue(generation)
        return generation

    def enqueue(self, handle: GenerationHandle) -> None:
        """Queue a request whose events go to `handle`; raises ValueError when it can never run."""
        check_fits(handle.request, self.config)
        self._inbox.put(_Job(handle, self.model))  # sampler and grammar errors raise here

    def close(self) -> None:
        """Stop the loop (running requests fail with a clear message) and free the context."""
        if self._thread.is_alive():
            self._inbox.put(None)
            self._thread.join()
        if self._ctx:
            llama_cpp.llama_batch_free(self._batch)
            llama_cpp.llama_free(self._ctx)
            self._ctx = None

    # --- engine thread -------------------------------------------------------------------

    def _run(self) -> None:
        waiting: deque[_Job] = deque()
        active: list[_Job] = []
        free_ids = list(range(self.config.parallel))
        while True:
            try:
                incoming = self._inbox.get(block=not (waiting or active))
                while True:
                    if incoming is None:
                        self._shut_down([*waiting, *active])
                        return
                    waiting.append(incoming)
                    incoming = self._inbox.get_nowait()
            except queue.Empty:
                pass
            self._admit(waiting, active, free_ids)
            if active:
                self._step(active, free_ids)

    def _admit(self, waiting: deque[_Job], active: list[_Job], free_ids: list[int]) -> None:
        """Move waiting jobs, oldest first, into the batch while slots and KV cells allow."""
        cells_in_use = sum(job.request.kv_cells() for job in active)
        while waiting:
            job = waiting[0]
            if job.generation.cancelled or job.request.max_tokens == 0:
                waiting.popleft()
                self._finish_job(job, "cancelled" if job.generation.cancelled else "length", free_ids)
                continue
            if job.request.n > len(free_ids) or cells_in_use + job.request.kv_cells() > self.kv_capacity:
                return
            waiting.popleft()
            for seq in job.sequences:
                seq.seq_id = free_ids.pop()
                seq.position = len(job.request.prompt_tokens)
            cells_in_use += job.request.kv_cells()
            active.append(job)

    def _step(self, active: list[_Job], free_ids: list[int]) -> None:
        """One decode of every running sequence's next token plus prompt chunks, then sampling."""
        for job in [job for job in active if job.generation.cancelled]:
            active.remove(job)
            self._finish_job(job, "cancelled", free_ids)
        readers: list[tuple[int, list[_Sequence]]] = []
        batch = _BatchWriter(self._batch, self.config.n_batch)
        for job in active:
            if job.prefilled:
                for seq in job.live:
                    readers.append((batch.add(seq.last_token, seq.position, [seq.seq_id], True), [seq]))
                    seq.position += 1
        for job in active:
            if not job.prefilled and batch.room:
                last_index = self._add_prompt_chunk(batch, job)
                if job.prefilled:
                    readers.append((last_index, job.live))
        if not batch.count:
            return
        status = llama_cpp.llama_decode(self._ctx, self._batch)
        if status != 0:
            log.error("llama_decode failed with status %d", status)
            for job in list(active):
                job.generation.publish(GenerationFailed(f"llama.cpp decode failed (status {status})"))
                active.remove(job)
                self._finish_job(job, "cancelled", free_ids)
            return
        for output_index, sequences in readers:
            for seq in sequences:
                self._accept(seq, seq.sampler.sample(self._ctx, output_index))
        for job in [job for job in active if not job.live]:
            active.remove(job)
            self._finish_job(job, "stop", free_ids)

    def _add_prompt_chunk(self, batch: _BatchWriter, job: _Job) -> int:
        prompt = job.request.prompt_tokens
        seq_ids = [seq.seq_id for seq in job.sequences]
        index = -1
        for position in range(job.prompt_read, min(len(prompt), job.prompt_read + batch.room)):
            index = batch.add(prompt[position], position, seq_ids, position == len(prompt) - 1)
            job.prompt_read = position + 1
        return index

    def _accept(self, seq: _Sequence, token: int) -> None:
        """Turn a sampled token into released text, and decide whether the sequence ends."""
        if self.model.is_eog(token):
            self._finish_sequence(seq, "stop")
            return
        seq.generated += 1
        seq.last_token = token
        released = seq.matcher.feed(seq.decoder.decode(self.model.piece(token)))
        if released:
            seq.job.generation.publish(TextDelta(seq.index, released))
        if seq.matcher.stopped:
            self._finish_sequence(seq, "stop")
        elif seq.generated >= seq.job.request.max_tokens:
            self._finish_sequence(seq, "length")

    def _finish_sequence(self, seq: _Sequence, reason: str) -> None:
        seq.done = True
        if reason == "cancelled":
            return
        tail = seq.matcher.feed(seq.decoder.decode(b"", final=True)) + seq.matcher.flush()
        if tail:
            seq.job.generation.publish(TextDelta(seq.index, tail))
        seq.job.generation.publish(ChoiceFinished(seq.index, reason, seq.generated))

    def _finish_job(self, job: _Job, reason: str, free_ids: list[int]) -> None:
        """End every live sequence with `reason`, free its KV cells and slot, close the stream."""
        for seq in job.live:
            self._finish_sequence(seq, reason)
        for seq in job.sequences:
            if seq.seq_id >= 0:
                llama_cpp.llama_memory_seq_rm(self._memory, seq.seq_id, -1, -1)
                free_ids.append(seq.seq_id)
                seq.seq_id = -1
        job.close_samplers()
        job.generation.publish(GenerationDone(len(job.request.prompt_tokens)))

    def _shut_down(self, jobs: list[_Job]) -> None:
        for job in jobs:
            job.generation.publish(GenerationFailed("the server is shutting down"))
            self._finish_job(job, "cancelled", [])


class _BatchWriter:
    """Fills a `llama_batch` from position 0; `add` returns the token's index in the batch."""

    def __init__(self, batch: llama_cpp.llama_batch, capacity: int) -> None:
        self._batch = batch
        self._batch.n_tokens = 0
        self.capacity = capacity
        self.count = 0

    @property
    def room(self) -> int:
        return self.capacity - self.count

    def add(self, token: int, position: int, seq_ids: list[int], wants_logits: bool) -> int:
        index = self.count
        self._batch.token[index] = token
        self._batch.pos[index] = position
        self._batch.n_seq_id[index] = len(seq_ids)
        for slot, seq_id in enumerate(seq_ids):
            self._batch.seq_id[index][slot] = seq_id
        self._batch.logits[index] = wants_logits
        self.count += 1
        self._batch.n_tokens = self.count
        return index
