"""Batches made ahead of time on a background thread, with the same order and resumable position.

Generating training text (reasoning-gym problems, traces, tokenisation) is pure Python and costs a
noticeable share of a CPU step; torch's kernels release the GIL, so a producer thread overlaps most of it
with the model's work. The producer pulls batches from a `Packer` in order and records the packer's state
after each one; `state_dict()` is the state after the last batch *handed out*, so a checkpoint never
counts batches that were made but not trained on, and resume is exact.
"""

from __future__ import annotations

import queue
import threading
from typing import Any


class Prefetcher:
    def __init__(self, packer, depth: int = 4):
        self.packer, self.depth = packer, depth
        self.seq_len, self.batch_size = packer.seq_len, packer.batch_size
        self._state = packer.state_dict()
        self._start()

    def _start(self) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=self.depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="batch-prefetch", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        try:
            while not self._stop.is_set():
                batch = self.packer.next_batch()
                item = (batch, self.packer.state_dict(), None)
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as error:  # hand the failure (e.g. a UserError) to the consumer
            self._queue.put((None, None, error))

    def next_batch(self):
        batch, state, error = self._queue.get()
        if error is not None:
            raise error
        self._state = state
        return batch

    def state_dict(self) -> dict[str, Any]:
        return dict(self._state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.close()
        self.packer.load_state_dict(state)
        self._state = self.packer.state_dict()
        self._start()

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(timeout=0.05)
