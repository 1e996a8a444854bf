"""Training batches: pack encoded examples into fixed-length rows, in a seeded order that can be resumed.

An example is `ids` (train on every token) or a pair `(ids, loss_mask)` with loss_mask[i] = 1 where ids[i] is a
target -- what `frugal_r1.tokenizer.encode_pretrain_document` / `encode_sft_example` return. The source
is either a Sequence of examples (finite: reshuffled every epoch) or a function `index -> example`
(an endless stream in index order, which must itself be deterministic, e.g. seeded by the index).

`Packer.next_batch()` returns, for B rows of T tokens:
  input_ids    [B, T] long  documents laid end to end, padding (`pad_id`) at the end of a row
  labels       [B, T] long  the target FOR position t, already shifted (do not shift again):
                            ids[t+1] of the same document, -100 where masked, at a document's last
                            token, and on padding. Loss = cross_entropy(logits.view(-1, V), labels.view(-1))
  position_ids [B, T] long  0, 1, 2, ... restarting at every document (and padding) start
  doc_ids      [B, T] long  0, 1, 2, ... one per document within the row; padding has its own id

Design choices:
- Attention never crosses documents: the model attends where doc_ids match and j <= i
  (`document_causal_mask` builds that mask). Positions restart per document, so a packed document
  is computed exactly as if it were alone.
- `split=True` (pretraining): documents are laid end to end with no padding; one that reaches the end
  of a row continues at the start of the next as a new segment (positions from 0; under RoPE only
  relative positions matter). Labels are computed on the whole document before it is cut, so the
  last token of the first piece still predicts the first token of the next: no target is lost. The
  tail of a cut document is trained without its head as context, as in any stream-packed pretraining.
- `split=False` (SFT): an example never straddles rows; if it does not fit in what is left of a row,
  the row is padded and it starts the next one. An example longer than T is a UserError, or with
  `drop_long=True` it is skipped and counted in `num_dropped` (and in the state).
- Order: epoch e of a Sequence of N examples is a permutation of range(N) from
  random.Random(f"{seed}:{epoch}"); the stream runs on from one epoch to the next without a break.
- Position: (epoch, index into that epoch's order, offset of the next token within that example),
  plus num_dropped -- four integers (the state also records seed and source size, to refuse resuming
  a different stream). `state_dict()`/`load_state_dict()` save and restore them (JSON-safe); batches
  after a restore are bit-identical to an uninterrupted run. The position does not depend on T, B or
  the world size, so a run may resume with other ones.
- `pad_id` may be any valid id (pass tokenizer.pad_token_id): padding is never a target and no real
  token attends to it, since it comes last in its row under its own doc id.
- Data parallel: every rank packs the same global stream; global step s is rows [s*W*B, (s+1)*W*B)
  and rank r keeps rows [s*W*B + r*B, s*W*B + (r+1)*B). Ranks get disjoint rows, all ranks hold the same
  state, and W ranks with batch B see exactly the rows one rank with batch W*B sees. The cost is that
  each rank builds the others' rows too, which is cheap next to a training step.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from frugal_r1.errors import UserError
from frugal_r1.model.transformer import document_mask as document_causal_mask  # noqa: F401 (re-exported)

IGNORE_INDEX = -100

Example = Sequence[int] | tuple[Sequence[int], Sequence[int]]
Source = Sequence[Example] | Callable[[int], Example]
MAX_DROPS_IN_A_ROW = 10_000  # of an endless source; a finite one fails after dropping every example


def example_labels(example: Example) -> tuple[list[int], list[int]]:
    """(ids, labels) of one document: labels[t] = ids[t+1] if loss_mask[t+1] else -100; the last is -100."""
    if isinstance(example, (tuple, list)) and len(example) == 2 and not isinstance(example[0], int):
        ids, mask = list(example[0]), list(example[1])
        if len(mask) != len(ids):
            raise ValueError(f"loss_mask has {len(mask)} entries for {len(ids)} ids")
    else:
        ids, mask = list(example), None
    labels = ids[1:] if mask is None else [t if m else IGNORE_INDEX for t, m in zip(ids[1:], mask[1:])]
    return ids, labels + [IGNORE_INDEX]


class Packer:
    """Seeded, resumable, rank-sharded batches of packed rows; see the module docstring."""

    def __init__(self, source: Source, seq_len: int, batch_size: int, *, seed: int = 0, split: bool = True,
                 drop_long: bool = False, pad_id: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if seq_len < 2 or batch_size < 1:
            raise UserError(f"seq_len must be >= 2 and batch_size >= 1, got {seq_len} and {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise UserError(f"rank {rank} is not in a world of size {world_size}")
        if not callable(source) and len(source) == 0:
            raise UserError("the training data has no examples")
        self.source, self.seq_len, self.batch_size = source, seq_len, batch_size
        self.seed, self.split, self.drop_long, self.pad_id = seed, split, drop_long, pad_id
        self.rank, self.world_size = rank, world_size
        self.epoch = self.index = self.offset = self.num_dropped = 0
        self._order: tuple[int, list[int]] | None = None  # (epoch, permutation) cache
        self._current: tuple[tuple[int, int], list[int], list[int]] | None = None  # ((epoch, index), ids, labels)

    # -- the position ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index, "offset": self.offset, "num_dropped": self.num_dropped,
                "seed": self.seed, "num_examples": self._num_examples()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("seed", "num_examples"):
            if key in state and state[key] != self.state_dict()[key]:
                raise UserError(f"the data state was saved with {key}={state[key]}, but this run has "
                                f"{key}={self.state_dict()[key]}; resume with the same data and seed")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self.offset, self.num_dropped = int(state["offset"]), int(state["num_dropped"])
        self._current = None

    def _num_examples(self) -> int:
        return -1 if callable(self.source) else len(self.source)

    # -- the stream of examples -----------------------------------------------------------------------
    def _example(self) -> tuple[list[int], list[int]]:
        """(ids, labels) of the example at (epoch, index)."""
        key = (self.epoch, self.index)
        if self._current is None or self._current[0] != key:
            if callable(self.source):
                example = self.source(self.index)
            else:
                if self._order is None or self._order[0] != self.epoch:
                    order = list(range(len(self.source)))
                    random.Random(f"{self.seed}:{self.epoch}").shuffle(order)
                    self._order = (self.epoch, order)
                example = self.source[self._order[1][self.index]]
            ids, labels = example_labels(example)
            if not ids:
                raise UserError(f"example {self.index} of epoch {self.epoch} is empty")
            self._current = (key, ids, labels)
        return self._current[1], self._current[2]

    def _advance(self) -> None:
        self.index, self.offset = self.index + 1, 0
        if not callable(self.source) and self.index == len(self.source):
            self.epoch, self.index = self.epoch + 1, 0

    # -- rows and batches -----------------------------------------------------------------------------
    def _next_row(self) -> tuple[list[int], list[int], list[int], list[int]]:
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        docs: list[int] = []
        doc = drops = 0
        while len(ids) < self.seq_len:
            example_ids, example_targets = self._example()
            room, rest = self.seq_len - len(ids), len(example_ids) - self.offset
            if not self.split and len(example_ids) > self.seq_len:
                if not self.drop_long:
                    raise UserError(f"an example of {len(example_ids)} tokens does not fit seq_len "
                                    f"{self.seq_len}; raise seq_len or drop long examples (drop_long)")
                self.num_dropped, drops = self.num_dropped + 1, drops + 1
                if drops > (MAX_DROPS_IN_A_ROW if callable(self.source) else len(self.source)):
                    raise UserError(f"every example is longer than seq_len {self.seq_len}; raise seq_len")
                self._advance()
                continue
            if not self.split and rest > room:
                break
            take = min(rest, room)
            ids += example_ids[self.offset:self.offset + take]
            labels += example_targets[self.offset:self.offset + take]
            positions += range(take)
            docs += [doc] * take
            doc += 1
            if take == rest:
                self._advance()
            else:
                self.offset += take
        pad = self.seq_len - len(ids)
        return (ids + [self.pad_id] * pad, labels + [IGNORE_INDEX] * pad, positions + list(range(pad)),
                docs + [doc] * pad)

    def next_batch(self) -> dict[str, torch.Tensor]:
        """This rank's next batch: input_ids, labels, position_ids, doc_ids, each [batch_size, seq_len]."""
        rows = [self._next_row() for _ in range(self.world_size * self.batch_size)]
        mine = rows[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        names = ("input_ids", "labels", "position_ids", "doc_ids")
        return {name: torch.tensor([row[k] for row in mine], dtype=torch.long) for k, name in enumerate(names)}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            yield self.next_batch()
