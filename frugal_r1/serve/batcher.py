"""The serving scheduler: requests from any number of clients decoded together, continuously.

One worker thread owns the model. Requests arrive from other threads (`submit`) into a queue; the worker
admits them into the running decode batch between two steps (continuous batching; see decoder.py), so a
request never waits for a batch it did not start with. When the model is idle the worker waits
`batch_window_s` (a few ms) after the first arrival so that a burst of clients prefills together. Rows
per request = its `n`; the batch holds at most `max_batch_rows` live rows, and a request that does not
fit waits for rows to finish.

Each step samples every live row (its own temperature / top-p / top-k, seed and step counter; see
`decoder.sample_rows`), appends the tokens to the request's `Rows` (the engine's bookkeeping: budgets,
stop tokens, stop strings) and reports to the request's callback, on the worker thread:
  `Update(tokens, finished)` per step for streaming requests — the new token of each unfinished choice
                             and the `Completion` of each choice that finished this step;
  `Done(completions)`        when every choice has finished;
  `Failed(message)`          when decoding raised (the batch is dropped; the server keeps serving).
A cancelled request (`Handle.cancel()`, e.g. its client disconnected) loses its rows at the next step.
Finished and cancelled rows are dropped from the cache in batches (once a quarter of the batch is dead,
or when rows join), as engine.py does, since each drop copies the cache.
"""

from __future__ import annotations

import collections
import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from frugal_r1.errors import UserError
from frugal_r1.generate.backend import Backend, Completion, Rows, SamplingParams
from frugal_r1.generate.engine import resolve_seed
from frugal_r1.generate.sampling import row_keys
from frugal_r1.serve.decoder import Batch, batch_for, sample_rows


@dataclass
class Update:
    tokens: dict[int, int]  # choice index -> its new token
    finished: dict[int, Completion] = field(default_factory=dict)


@dataclass
class Done:
    completions: list[Completion]


@dataclass
class Failed:
    message: str


Event = Update | Done | Failed


class Handle:
    """A submitted request. `cancel()` is safe from any thread; events go to `on_event` (worker thread)."""

    _ids = itertools.count()

    def __init__(self, prompt_ids: list[int], params: SamplingParams, on_event: Callable[[Event], None],
                 stream: bool):
        self.id = next(self._ids)
        self.prompt_ids = prompt_ids
        self.params = params
        self.on_event = on_event
        self.stream = stream
        self.cancelled = False
        self.finished = False

    def cancel(self) -> None:
        self.cancelled = True

    def emit(self, event: Event) -> None:
        if isinstance(event, (Done, Failed)):
            self.finished = True
        try:
            self.on_event(event)
        except Exception:  # the listener is gone (its event loop closed): nobody wants the rest
            self.cancelled = True


class _Live:
    """A request being decoded: its Rows and sampling keys."""

    def __init__(self, handle: Handle, rows: Rows, keys: torch.Tensor):
        self.handle = handle
        self.rows = rows
        self.keys = keys
        self.unfinished = rows.num_rows


class Scheduler:
    def __init__(self, backend: Backend, *, max_batch_rows: int = 64, batch_window_s: float = 0.005,
                 compact_fraction: float = 0.25):
        if max_batch_rows < 1:
            raise UserError(f"max_batch_rows must be >= 1, got {max_batch_rows}")
        self.backend = backend
        self.batch: Batch = batch_for(backend)
        self.max_batch_rows = max_batch_rows
        self.batch_window_s = batch_window_s
        self.compact_fraction = compact_fraction
        self._pending: collections.deque[Handle] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._clear()
        self.counters = {"steps": 0, "admitted": 0, "completed": 0, "cancelled": 0, "failed": 0,
                         "joins": 0, "max_live_rows": 0}

    # --- the client side ----------------------------------------------------------------------------
    def start(self) -> "Scheduler":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="frugal-r1-scheduler", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def submit(self, prompt_ids: list[int], params: SamplingParams, on_event: Callable[[Event], None],
               stream: bool = False) -> Handle:
        """Queue a request (raises UserError for one the model cannot take)."""
        if not prompt_ids:
            raise UserError("the prompt is empty")
        if len(prompt_ids) >= self.backend.context_length:
            raise UserError(f"the prompt has {len(prompt_ids)} tokens; the context holds "
                            f"{self.backend.context_length}, which leaves no room to generate")
        if params.n > self.max_batch_rows:
            raise UserError(f"n = {params.n} is more than the server's batch of {self.max_batch_rows} rows")
        self.backend.stop_ids(params)  # validates stop ids against the vocabulary
        handle = Handle(list(prompt_ids), params, on_event, stream)
        with self._cond:
            if self._stopping:
                raise UserError("the server is shutting down")
            self._pending.append(handle)
            self._cond.notify_all()
        return handle

    def events(self, prompt_ids: list[int], params: SamplingParams, stream: bool = True) -> Iterator[Event]:
        """Submit and iterate over the events from this thread; closing the iterator cancels the request."""
        inbox: queue.Queue[Event] = queue.Queue()
        handle = self.submit(prompt_ids, params, inbox.put, stream)
        try:
            while True:
                event = inbox.get()
                yield event
                if isinstance(event, (Done, Failed)):
                    return
        finally:
            handle.cancel()

    def stats(self) -> dict[str, int]:
        return {**self.counters, "live_requests": len(self._live), "live_rows": int(self._alive.sum()),
                "batch_rows": len(self._owner), "pending": len(self._pending)}

    # --- the worker ---------------------------------------------------------------------------------
    def _clear(self) -> None:
        self._live: list[_Live] = []
        self._owner: list[_Live] = []  # per batch row
        self._local: list[int] = []  # per batch row: its row in the owner's Rows
        self._params: list[SamplingParams] = []
        self._keys = torch.zeros(0, dtype=torch.long)
        self._count = torch.zeros(0, dtype=torch.long)  # tokens generated per batch row
        self._prompt_len = torch.zeros(0, dtype=torch.long)
        self._budget = torch.zeros(0, dtype=torch.long)
        self._alive = torch.zeros(0, dtype=torch.bool)
        self._logits: torch.Tensor | None = None

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            taken = self._take()
            if self._stopping:
                self._fail_all("the server is shutting down", taken)
                return
            try:
                with torch.inference_mode():
                    if taken:
                        self._admit(taken)
                    if self._live:
                        self._step()
            except Exception as error:  # a bug or out-of-memory: fail these requests, keep serving
                self._fail_all(f"generation failed: {type(error).__name__}: {error}", taken)

    def _take(self) -> list[Handle]:
        with self._cond:
            idle = not self._live
            while idle and not self._pending and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return []
        if idle and self.batch_window_s > 0:
            time.sleep(self.batch_window_s)
        with self._cond:
            live_rows = int(self._alive.sum())
            if live_rows and not self.batch.can_join():
                return []
            room, taken = self.max_batch_rows - live_rows, []
            while self._pending and self._pending[0].params.n <= room:
                handle = self._pending.popleft()
                if handle.cancelled:
                    self.counters["cancelled"] += 1
                    continue
                taken.append(handle)
                room -= handle.params.n
            return taken

    def _admit(self, handles: list[Handle]) -> None:
        live = []
        for handle in handles:
            try:
                rows = Rows([handle.prompt_ids], handle.params, self.backend.stop_ids(handle.params),
                            self.backend.context_length, self.backend.tokenizer)
            except UserError as error:
                handle.emit(Failed(str(error)))
                continue
            live.append(_Live(handle, rows, row_keys(resolve_seed(handle.params), 1, handle.params.n)))
        if not live:
            return
        self._drop_dead(force=True)
        joining = bool(self._owner)
        prompts, budgets = [], []
        for item in live:
            prompts += item.rows.row_prompts
            budgets += item.rows.budget.tolist()
        remaining = (self._budget - self._count)[self._alive].tolist()
        logits = self.batch.add(prompts, budgets, remaining)
        for item in live:
            n = item.rows.num_rows
            self._owner += [item] * n
            self._local += list(range(n))
            self._params += [item.handle.params] * n
        self._keys = torch.cat([self._keys, *(item.keys for item in live)])
        self._prompt_len = torch.cat([self._prompt_len, *(item.rows.prompt_lengths for item in live)])
        self._budget = torch.cat([self._budget, torch.tensor(budgets, dtype=torch.long)])
        self._count = torch.cat([self._count, torch.zeros(len(budgets), dtype=torch.long)])
        self._alive = torch.cat([self._alive, torch.ones(len(budgets), dtype=torch.bool)])
        self._logits = logits if self._logits is None else torch.cat([self._logits, logits])
        self._live += live
        self.counters["admitted"] += len(live)
        self.counters["joins"] += joining

    def _step(self) -> None:
        self.counters["steps"] += 1
        self.counters["max_live_rows"] = max(self.counters["max_live_rows"], int(self._alive.sum()))
        live = self._alive.nonzero().flatten()
        tokens, logprobs = sample_rows(self._logits[live], [self._params[i] for i in live.tolist()],
                                       self._keys[live], self._count[live])
        next_tokens = torch.zeros(len(self._owner), dtype=torch.long)
        next_tokens[live] = tokens
        self._count[live] += 1
        by_owner: dict[int, list[int]] = {}
        for position, row in enumerate(live.tolist()):
            by_owner.setdefault(id(self._owner[row]), []).append(position)
        for positions in by_owner.values():
            self._append(positions, live, tokens, logprobs)
        for item in self._live:
            if item.handle.cancelled and not item.handle.finished:
                self._retire(item, cancelled=True)
        self._live = [item for item in self._live if not item.handle.finished]
        if not self._live:
            self.batch.reset()
            self._clear()
            return
        kept = self._drop_dead(force=False)
        if kept is not None:
            next_tokens = next_tokens[kept]
        positions = (self._prompt_len + self._count - 1).clamp(min=0)
        self._logits = self.batch.step(next_tokens, positions)

    def _append(self, positions: list[int], live: torch.Tensor, tokens: torch.Tensor,
                logprobs: torch.Tensor) -> None:
        index = torch.tensor(positions, dtype=torch.long)
        batch_rows = live[index]
        item = self._owner[int(batch_rows[0])]
        local = torch.tensor([self._local[int(r)] for r in batch_rows], dtype=torch.long)
        done = item.rows.append(local, tokens[index, None], logprobs[index, None])
        self._alive[batch_rows[done]] = False
        item.unfinished -= int(done.sum())
        if item.handle.cancelled:
            return
        if item.handle.stream:
            finished = {}
            if done.any():
                completions = item.rows.completions()
                finished = {int(r): completions[int(r)] for r in local[done]}
            item.handle.emit(Update({int(r): int(t) for r, t, d in zip(local, tokens[index], done) if not d},
                                    finished))
        if item.unfinished == 0:
            self._retire(item, cancelled=False)

    def _retire(self, item: _Live, cancelled: bool) -> None:
        rows = [i for i, owner in enumerate(self._owner) if owner is item]
        self._alive[rows] = False
        if cancelled:
            item.handle.finished = True
            self.counters["cancelled"] += 1
        else:
            self.counters["completed"] += 1
            item.handle.emit(Done(item.rows.completions()))

    def _drop_dead(self, force: bool) -> torch.Tensor | None:
        """Drop finished and cancelled rows from the batch (always when `force`, else once enough died);
        returns the indices of the rows kept, or None when nothing was dropped."""
        total = len(self._owner)
        dead = total - int(self._alive.sum())
        if dead == 0 or (not force and dead < self.compact_fraction * total):
            return None
        if dead == total:
            self.batch.reset()
            self._clear()
            return torch.zeros(0, dtype=torch.long)
        kept = self._alive.nonzero().flatten()
        self.batch.keep(kept)
        rows = kept.tolist()
        self._owner = [self._owner[i] for i in rows]
        self._local = [self._local[i] for i in rows]
        self._params = [self._params[i] for i in rows]
        for name in ("_keys", "_count", "_prompt_len", "_budget", "_alive"):
            setattr(self, name, getattr(self, name)[kept])
        if self._logits is not None:
            self._logits = self._logits[kept]
        return kept

    def _fail_all(self, message: str, taken: list[Handle]) -> None:
        handles = [item.handle for item in self._live] + list(taken)
        with self._cond:
            if self._stopping:
                handles += list(self._pending)
                self._pending.clear()
        for handle in handles:
            if not handle.finished:
                self.counters["failed"] += 1
                handle.emit(Failed(message))
        try:
            self.batch.reset()
        finally:
            self._clear()


__all__ = ["Scheduler", "Handle", "Update", "Done", "Failed", "Event"]
