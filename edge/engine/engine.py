"""The engine: the only code that runs llama.cpp generation.

One llama context with `parallel` sequence slots lives on one thread. Each step of its loop puts
into one batch the next token of every running sequence plus a chunk of any prompt still being
read, decodes once, then samples every sequence that asked for logits with its own sampler
chain. Requests join and leave between steps, so several are served at once. Slots keep their
tokens after a request (edge/engine/slots.py): a request whose prompt starts like a slot's
tokens, a conversation's next turn say, evaluates only the rest. An n=2 request reads its prompt
once, into its first sequence, whose cells are then copied to the second.

Each sequence has a KV stream of its own (`kv_unified` off, as llama-server by default). With
one unified cache a sequence's cells land wherever the other requests leave room, and the
attention's vectorized sums over the cache then group them differently: measured here, greedy
output of 8 prompts read together left that of the same prompts read alone after 2 to 30
tokens. Per-sequence streams put a sequence's cells where they would be alone, and batched output
then equals solo output token for token (tests/api/test_concurrency.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future

import llama_cpp

from edge.engine.batch import BatchWriter, self_test
from edge.engine.config import EngineConfig, check_fits, context_params
from edge.engine.job import Job, Sequence
from edge.engine.jobs import (
    ChoiceFinished, EngineUnavailable, Generation, GenerationDone, GenerationFailed, GenerationHandle, GenerationRequest,
    Outbox, QueueFull, RequestInvalid, ShuttingDown,
    Started, TextDelta,
)
from edge.engine.logprobs import token_logprob
from edge.engine.llama_model import LlamaModel, ModelLoadError
from edge.engine.metrics import EngineMetrics
from edge.engine.slots import SlotTable
from edge.engine.speculator import Speculator
from edge.engine.step_batch import Reader, fill_step
from edge.engine.step_profile import DECODE, PUBLISH, SAMPLE, TEXT

log = logging.getLogger("edge.engine")


class Engine:
    """Owns the llama context and the thread that decodes on it."""

    def __init__(self, model: LlamaModel, config: EngineConfig,
                 on_death: Callable[[BaseException], None] | None = None) -> None:
        self.model = model
        self.config = config
        self._on_death = on_death  # told once, from the engine thread, if its loop ever raises
        self._died: BaseException | None = None
        self.metrics = EngineMetrics()
        self._ctx = llama_cpp.llama_init_from_model(model.ptr, context_params(config))
        if not self._ctx:
            raise ModelLoadError("llama.cpp could not create a context (out of memory?)")
        self._slots = SlotTable(llama_cpp.llama_get_memory(self._ctx), config.parallel)
        self._batch = llama_cpp.llama_batch_init(config.n_batch, 0, config.parallel)
        self._speculator: Speculator | None = None
        try:
            self._speculator = Speculator.start(config, model, self.metrics)  # None: no speculation
        except BaseException:
            self._free_context()
            raise
        self._inbox: queue.Queue[Job | None] = queue.Queue()
        self._outbox = Outbox()  # events wait here for the end of the step (engine thread only)
        # Slots asked for by requests not yet finished (the event loop adds, the engine thread
        # subtracts), and the mean request duration that Retry-After is based on.
        self._lock = threading.Lock()
        self._demand = 0
        self._closing = False  # set once by close(): refuse new requests
        self._close_lock = threading.Lock()  # close() may come from a shutdown timer and from the owner
        self._mean_seconds = 1.0
        # Every llama.cpp computation runs on the engine thread, the self-test too. ggml's OpenMP
        # build syncs each graph node with an OpenMP barrier, and libgomp spins at a barrier only
        # while its threads (every team of every thread that ever ran a parallel region) fit the
        # CPUs; a second team, the caller's, turns the spins into sleeps. Measured on a 2-core AMD
        # EPYC, SmolLM2 Q4_1, one sequence: 9-10 ms per decode on one thread, 12-14 ms once the
        # constructor's thread had decoded too.
        self._self_tested: Future[None] = Future()
        self._thread = threading.Thread(target=self._run, name="edge-engine", daemon=True)
        self._thread.start()
        self._self_tested.result()  # its failure, raised here: the engine never starts

    def _self_test(self) -> None:
        """Decode one batch through the loaded kernels before serving anything (batch.self_test)."""
        self_test(self._ctx, self._batch, min(self.config.n_batch, self.config.ctx_size),
                  llama_cpp.llama_vocab_n_tokens(self.model.vocab))
        if self._speculator is not None:
            self._speculator.self_test()

    @property
    def ready(self) -> bool:
        """False once the engine thread has died (or stopped): nothing will be decoded any more."""
        return self._died is None and self._thread.is_alive()

    def submit(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop) -> Generation:
        """Queue `request`; RequestInvalid when it can never run here, QueueFull when too many wait."""
        generation = Generation(request, loop)
        self.enqueue(generation)
        return generation

    def enqueue(self, handle: GenerationHandle) -> None:
        """Queue a request whose events go to `handle` (a Generation, or a pipe to another process)."""
        request = handle.request
        check_fits(request, self.config)
        with self._lock:
            self._refuse_if_dead()
            # Deterministic: requests beyond the slots plus the queue are refused whatever the
            # engine thread has picked up so far.
            if self._demand + request.n > self.config.parallel + self.config.max_queue:
                self.metrics.requests.labels("rejected").inc()
                raise QueueFull(f"{self.config.max_queue} requests are already waiting; retry later",
                                self._retry_after_locked())
            self._demand += request.n
        try:
            job = Job(handle, self.model, self.config.speculative)  # sampler and grammar errors raise here
        except ValueError as error:
            self._release_demand(request.n)
            raise error if isinstance(error, RequestInvalid) else RequestInvalid(str(error)) from error
        except BaseException:
            self._release_demand(request.n)
            raise
        with self._lock:  # the death path drains the inbox under this lock: nothing is left behind
            if self._died is None and not self._closing:
                self._inbox.put(job)
                return
            self._demand -= request.n
        job.close_samplers()
        self._refuse_if_dead()

    def _refuse_if_dead(self) -> None:
        if self._closing:
            raise ShuttingDown("the server is shutting down", self._retry_after_locked())
        if self._died is not None:
            raise EngineUnavailable("the engine has stopped; the server is restarting", self._retry_after_locked())

    def _release_demand(self, n: int) -> None:
        with self._lock:
            self._demand -= n

    def retry_after(self) -> int:
        """Seconds a turned-away client should wait: the recent mean request duration."""
        with self._lock:
            return self._retry_after_locked()

    def _retry_after_locked(self) -> int:
        return max(1, math.ceil(self._mean_seconds))

    def close(self) -> None:
        """Stop the loop (running and queued requests fail with "shutting_down") and free the
        context. Idempotent, and safe to call from any thread."""
        with self._close_lock:
            with self._lock:  # from here enqueue refuses: nothing lands in the inbox after the stop
                self._closing = True
            if self._thread.is_alive():
                self._inbox.put(None)
                self._thread.join()
            self._free_context()

    def _free_context(self) -> None:
        if self._ctx:
            llama_cpp.llama_batch_free(self._batch)
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
            if self._speculator is not None:
                self._speculator.close()

    # --- engine thread -------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._self_test()
        except BaseException as error:  # noqa: BLE001 - handed to the constructor, which raises it
            self._self_tested.set_exception(error)
            return
        self._self_tested.set_result(None)
        waiting: deque[Job] = deque()
        active: list[Job] = []
        try:
            self._loop(waiting, active)
        except BaseException as error:  # a bug or a llama.cpp failure: fail everyone, never hang them
            log.exception("the engine thread died")
            with self._lock:
                self._died = error
            self._fail_all([*waiting, *active], "the engine failed; the server is restarting, retry shortly")
            with self._lock:  # enqueue puts nothing in once _died is set (under this lock)
                leftovers = self._take_inbox()
            self._fail_all(leftovers, "the engine failed; the server is restarting, retry shortly")
            if self._on_death is not None:
                self._on_death(error)

    def _take_inbox(self) -> list[Job]:
        jobs = []
        while True:
            try:
                job = self._inbox.get_nowait()
            except queue.Empty:
                return jobs
            if job is not None:
                jobs.append(job)

    def _fail_all(self, jobs: list[Job], message: str) -> None:
        for job in jobs:
            job.outcome = "failed"
            try:
                self._outbox.put(job.generation, GenerationFailed(message, "engine_unavailable"))
                self._finish_job(job, "cancelled")
            except Exception:  # noqa: BLE001 - the state that killed the loop may break this too
                self._outbox.put(job.generation, GenerationDone(len(job.request.prompt_tokens)))
        self._outbox.flush()

    def _loop(self, waiting: deque[Job], active: list[Job]) -> None:
        while True:
            try:
                # Block only when idle; with requests waiting, wake up now and then to time them out.
                timeout = None if not waiting else 0.2
                incoming = self._inbox.get(block=not active, timeout=timeout)
                while True:
                    if incoming is None:
                        self._shut_down([*waiting, *active])
                        self._outbox.flush()
                        return
                    waiting.append(incoming)
                    incoming = self._inbox.get_nowait()
            except queue.Empty:
                pass
            self._admit(waiting, active)
            if active:
                self._step(active)
            self._outbox.flush()  # the step's events, to each event loop at once

    def _admit(self, waiting: deque[Job], active: list[Job]) -> None:
        """Move waiting jobs, oldest first, into the batch while slots are free."""
        if not waiting:  # nothing can change: the gauges were set when the queue last emptied
            return
        self._expire(waiting)
        while waiting:
            job = waiting[0]
            if job.request.max_tokens == 0:
                waiting.popleft()
                self._finish_job(job, "length")
                continue
            prompt = job.request.prompt_tokens
            claim = self._slots.claim(prompt, job.request.n)
            if claim is None:
                break
            waiting.popleft()
            for seq, slot in zip(job.sequences, claim.slots):
                seq.slot = slot
                seq.position = len(prompt)
            job.prompt_read = claim.reused
            active.append(job)
            self.metrics.prompt_tokens.inc(len(prompt))
            self.metrics.prefix_hit_tokens.inc(claim.reused)
            self._outbox.put(job.generation, Started(claim.reused))
        self.metrics.queue_depth.set(len(waiting))
        self.metrics.busy_slots.set(self._slots.busy)

    def _expire(self, waiting: deque[Job]) -> None:
        """Drop the waiting jobs whose client left, and fail those that waited too long."""
        limit = self.config.queue_timeout
        now = time.monotonic()
        for job in list(waiting):
            if job.generation.cancelled:
                waiting.remove(job)
                self._finish_job(job, "cancelled")
            elif limit is not None and now - job.submitted > limit:
                waiting.remove(job)
                job.outcome = "timeout"
                self._outbox.put(job.generation, GenerationFailed(
                    f"the request waited more than {limit:g} s for a free slot; the server is busy, retry later",
                    "queue_timeout"))
                self._finish_job(job, "cancelled")

    def _step(self, active: list[Job]) -> None:
        """One decode of every running sequence's next token plus prompt chunks, then sampling."""
        for job in [job for job in active if job.generation.cancelled]:
            active.remove(job)
            self._finish_job(job, "cancelled")
        profile = self.metrics.steps
        profile.start()
        batch = BatchWriter(self._batch, self.config.n_batch)
        readers, decoding_only = fill_step(batch, active, self._slots, self._speculator, self.config.n_batch)
        if not batch.count:
            return
        profile.decoding()
        status = llama_cpp.llama_decode(self._ctx, self._batch)
        profile.decoded()
        if self._speculator is not None and batch.count == decoding_only:
            self._speculator.observe([(sequences[0].slot.seq_id, 1 + len(drafts)) for _, sequences, drafts in readers],
                                     profile.totals[DECODE])
        if status != 0:
            log.error("llama_decode failed with status %d", status)
            for job in list(active):
                job.outcome = "failed"
                self._outbox.put(job.generation, GenerationFailed(f"llama.cpp decode failed (status {status})", "decode_failed"))
                active.remove(job)
                self._finish_job(job, "cancelled")
            return
        self._sample(readers)
        for job in [job for job in active if not job.live]:
            active.remove(job)
            self._finish_job(job, "stop")
        publish_started = time.perf_counter()
        self._outbox.flush()
        profile.add(PUBLISH, time.perf_counter() - publish_started)
        profile.commit()

    def _sample(self, readers: list[Reader]) -> None:
        """Draw each sequence's next token from the logits at its batch index, and accept it;
        then, in order, one more for each draft its sampling agreed with."""
        profile = self.metrics.steps
        for output_index, sequences, drafts in readers:
            for seq in sequences:
                if seq.slot is not sequences[0].slot:  # n=2, prompt just read: the second gets a copy
                    self._slots.copy(sequences[0].slot, seq.slot)
                profile.sampled()  # once per sequence, however many of its drafts it verifies
                kept = 0
                for offset in range(len(drafts) + 1):
                    sampling_started = time.perf_counter()
                    token = seq.sampler.sample(self._ctx, output_index + offset)
                    profile.add(SAMPLE, time.perf_counter() - sampling_started)
                    self._accept(seq, token, output_index + offset)
                    if seq.done or offset == len(drafts) or token != drafts[offset]:
                        break
                    kept += 1
                if drafts:
                    self._keep_drafts(seq, drafts, kept)

    def _keep_drafts(self, seq: Sequence, drafts: list[int], kept: int) -> None:
        """Forget the cells of the drafts after the first `kept`, and count them."""
        self._speculator.verified(seq, len(drafts), kept)
        rejected = len(drafts) - kept
        if rejected:
            seq.position -= rejected
            self._slots.truncate(seq.slot, seq.position)

    def _accept(self, seq: Sequence, token: int, output_index: int) -> None:
        """Turn a sampled token into released text, and decide whether the sequence ends."""
        job = seq.job
        if job.first_token_at is None:
            job.first_token_at = time.monotonic()
            self.metrics.ttft.observe(job.first_token_at - job.submitted)
        if self.model.is_eog(token):
            self._finish_sequence(seq, "stop")
            return
        seq.generated += 1
        self.metrics.completion_tokens.inc()
        seq.last_token = token
        if seq.drafts is not None:
            seq.drafts.accepted(token)
        if job.request.logprobs is not None:
            seq.pending_logprobs.append(token_logprob(self._ctx, output_index, self.model.n_vocab, token,
                                                      job.request.logprobs))
        profile = self.metrics.steps
        text_started = time.perf_counter()
        released = seq.matcher.feed(seq.decoder.decode(self.model.piece(token)))
        profile.add(TEXT, time.perf_counter() - text_started)
        if released:
            self._outbox.put(job.generation, TextDelta(seq.index, released, seq.take_logprobs()))
        if seq.matcher.stopped:
            self._finish_sequence(seq, "stop")
        elif seq.generated >= job.request.max_tokens:
            self._finish_sequence(seq, "length")

    def _finish_sequence(self, seq: Sequence, reason: str) -> None:
        seq.done = True
        if reason == "cancelled":
            return
        tail = seq.matcher.feed(seq.decoder.decode(b"", final=True)) + seq.matcher.flush()
        # The tokens of a stop string are not part of the answer, nor are their logprobs.
        logprobs = () if seq.matcher.stopped else seq.take_logprobs()
        if tail or logprobs:
            self._outbox.put(seq.job.generation, TextDelta(seq.index, tail, logprobs))
        self._outbox.put(seq.job.generation, ChoiceFinished(seq.index, reason, seq.generated, seq.matcher.matched))

    def _finish_job(self, job: Job, reason: str) -> None:
        """End every live sequence with `reason`, release its slots, close the stream, count it."""
        for seq in job.live:
            self._finish_sequence(seq, reason)
        # A failed decode leaves the cache's content for these slots uncertain: forget it.
        self._slots.release(job.slots, keep=job.outcome != "failed")
        job.close_samplers()
        # Counted before GenerationDone goes out: the API cancels every generation once it is done.
        self._account(job, job.outcome or ("cancelled" if reason == "cancelled" else "completed"))
        self._outbox.put(job.generation, GenerationDone(len(job.request.prompt_tokens)))

    def _account(self, job: Job, outcome: str) -> None:
        now = time.monotonic()
        self.metrics.requests.labels(outcome).inc()
        generated = sum(seq.generated for seq in job.sequences)
        if job.first_token_at is not None and generated > 1 and now > job.first_token_at:
            self.metrics.decode_rate.observe((generated - 1) / (now - job.first_token_at))
        if job.drafted:
            self.metrics.acceptance_rate.observe(job.draft_accepted / job.drafted)
            log.debug("speculation: %d of %d drafted tokens kept (%.0f%%) for %d generated", job.draft_accepted,
                      job.drafted, 100 * job.draft_accepted / job.drafted, generated)
        self.metrics.busy_slots.set(self._slots.busy)
        with self._lock:
            self._demand -= job.request.n
            self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * (now - job.submitted)

    def _shut_down(self, jobs: list[Job]) -> None:
        for job in jobs:
            job.outcome = "failed"
            self._outbox.put(job.generation, GenerationFailed("the server is shutting down", "shutting_down"))
            self._finish_job(job, "cancelled")
