"""Packing: labels, positions and document ids; splitting; seeded order; exact resume; rank shards."""

import json
import random

import pytest
import torch
import torch.nn.functional as F

from frugal_r1.data import IGNORE_INDEX, Packer, document_causal_mask, example_labels
from frugal_r1.errors import UserError


def documents(n: int = 40, seed: int = 0, max_len: int = 23) -> list[list[int]]:
    """Documents with globally unique token values, so each token says where it came from."""
    rng, docs, next_token = random.Random(seed), [], 10
    for _ in range(n):
        length = rng.randrange(2, max_len)
        docs.append(list(range(next_token, next_token + length)))
        next_token += length
    return docs


def sft_examples(n: int = 40) -> list[tuple[list[int], list[int]]]:
    return [(ids, [0] * (len(ids) // 2) + [1] * (len(ids) - len(ids) // 2)) for ids in documents(n)]


def take(packer: Packer, n: int) -> list[dict[str, torch.Tensor]]:
    return [packer.next_batch() for _ in range(n)]


def test_example_labels_shift_and_mask():
    assert example_labels([5, 6, 7]) == ([5, 6, 7], [6, 7, IGNORE_INDEX])
    assert example_labels(([5, 6, 7, 8], [0, 0, 1, 1])) == ([5, 6, 7, 8], [IGNORE_INDEX, 7, 8, IGNORE_INDEX])


def test_rows_by_hand():
    examples = [([1, 2, 3], [0, 1, 1]), ([4, 5], [0, 1]), ([6, 7, 8, 9], [0, 0, 1, 1])]
    in_order = lambda index: examples[index % 3]  # noqa: E731 -- an endless source is read in index order
    batch = Packer(in_order, seq_len=6, batch_size=2, split=False, pad_id=0).next_batch()
    x = IGNORE_INDEX
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5, 0], [6, 7, 8, 9, 0, 0]]
    assert batch["labels"].tolist() == [[2, 3, x, 5, x, x], [x, 8, 9, x, x, x]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]]
    assert batch["doc_ids"].tolist() == [[0, 0, 0, 1, 1, 2], [0, 0, 0, 0, 1, 1]]
    assert all(t.dtype == torch.long for t in batch.values())
    split = Packer(in_order, seq_len=4, batch_size=2, split=True).next_batch()
    assert split["input_ids"].tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert split["labels"].tolist() == [[2, 3, x, 5], [x, x, 8, 9]]
    assert split["position_ids"].tolist() == [[0, 1, 2, 0], [0, 0, 1, 2]]
    assert split["doc_ids"].tolist() == [[0, 0, 0, 1], [0, 1, 1, 1]]


def check_targets(batches, docs):
    """Every target is the next token of the same document, and no position is labelled twice."""
    following = {d[i]: d[i + 1] for d in docs for i in range(len(d) - 1)}
    for batch in batches:
        for ids, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist()):
            for token, label in zip(ids, labels):
                if label != IGNORE_INDEX:
                    assert following[token] == label


def test_split_packing_has_no_padding_and_loses_no_target():
    docs = documents()
    packer = Packer(docs, seq_len=16, batch_size=3, split=True, seed=1)
    batches = take(packer, 8)
    check_targets(batches, docs)
    stream_ids = torch.cat([b["input_ids"].flatten() for b in batches]).tolist()
    stream_labels = torch.cat([b["labels"].flatten() for b in batches]).tolist()
    # The rows laid end to end are the shuffled documents laid end to end, labels included.
    by_first = {d[0]: d for d in docs}
    expected_ids, expected_labels = [], []
    while len(expected_ids) < len(stream_ids):
        doc = by_first[stream_ids[len(expected_ids)]]
        expected_ids += doc
        expected_labels += example_labels(doc)[1]
    assert stream_ids == expected_ids[:len(stream_ids)] and stream_labels == expected_labels[:len(stream_ids)]
    # A document cut at a row end continues as a new segment at position 0.
    for batch in batches:
        assert (batch["position_ids"][:, 0] == 0).all()
        starts = batch["position_ids"] == 0
        assert torch.equal(starts[:, 1:], batch["doc_ids"][:, 1:] != batch["doc_ids"][:, :-1])


def test_sft_packing_never_splits_and_masks_the_prompt():
    examples = sft_examples()
    batches = take(Packer(examples, seq_len=32, batch_size=2, split=False, pad_id=0, seed=3), 10)
    check_targets(batches, [ids for ids, _ in examples])
    whole = {tuple(ids): example_labels((ids, mask))[1] for ids, mask in examples}
    for batch in batches:
        for ids, labels, docs in zip(batch["input_ids"].tolist(), batch["labels"].tolist(), batch["doc_ids"].tolist()):
            for doc in set(docs):
                segment = tuple(t for t, d in zip(ids, docs) if d == doc)
                segment_labels = [l for l, d in zip(labels, docs) if d == doc]
                if set(segment) == {0}:
                    assert set(segment_labels) == {IGNORE_INDEX}  # padding
                else:
                    assert whole[segment] == segment_labels


def test_too_long_examples():
    examples = sft_examples()
    longest = max(len(ids) for ids, _ in examples)
    with pytest.raises(UserError, match="does not fit seq_len"):
        take(Packer(examples, seq_len=longest - 1, batch_size=4, split=False), 20)
    packer = Packer(examples, seq_len=longest - 1, batch_size=4, split=False, drop_long=True)
    take(packer, 20)
    assert packer.num_dropped > 0 and packer.state_dict()["num_dropped"] == packer.num_dropped
    with pytest.raises(UserError, match="every example is longer"):
        Packer(examples, seq_len=2, batch_size=1, split=False, drop_long=True).next_batch()
    split = Packer([list(range(10, 100))], seq_len=16, batch_size=2, split=True)
    check_targets(take(split, 5), [list(range(10, 100))])


def test_each_epoch_is_a_seeded_permutation():
    examples = sft_examples(25)
    packer = Packer(examples, seq_len=30, batch_size=1, split=False, seed=5)
    seen = []
    while packer.epoch < 2:
        batch = packer.next_batch()
        seen += [t for t, p in zip(batch["input_ids"][0].tolist(), batch["position_ids"][0].tolist())
                 if p == 0 and t != 0]
    first, second = seen[:25], seen[25:50]
    assert sorted(first) == sorted(second) == sorted(ids[0] for ids, _ in examples)
    assert first != second
    same = take(Packer(examples, seq_len=30, batch_size=2, split=False, seed=5), 3)
    other = take(Packer(examples, seq_len=30, batch_size=2, split=False, seed=6), 3)
    again = take(Packer(examples, seq_len=30, batch_size=2, split=False, seed=5), 3)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(same, again))
    assert not all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(same, other))


def stream(index: int) -> tuple[list[int], list[int]]:
    rng = random.Random(index)
    ids = [rng.randrange(10, 1000) for _ in range(rng.randrange(3, 40))]
    return ids, [0] * 2 + [1] * (len(ids) - 2)


@pytest.mark.parametrize("source, split", [(documents(), True), (sft_examples(), False), (stream, True),
                                           (stream, False)])
def test_resume_is_bit_identical(source, split):
    def packer():
        return Packer(source, seq_len=24, batch_size=3, split=split, seed=11, drop_long=True)
    uninterrupted = packer()
    straight = take(uninterrupted, 10)
    interrupted = packer()
    first = take(interrupted, 4)
    state = json.loads(json.dumps(interrupted.state_dict()))  # survives a checkpoint as JSON
    resumed = packer()
    resumed.load_state_dict(state)
    for a, b in zip(straight, first + take(resumed, 6)):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.state_dict() == uninterrupted.state_dict()
    other_seed = Packer(source, seq_len=24, batch_size=3, split=split, seed=12)
    with pytest.raises(UserError, match="seed"):
        other_seed.load_state_dict(state)


def test_ranks_get_disjoint_rows_of_the_same_global_order():
    docs, world = documents(60), 3
    ranks = [Packer(docs, seq_len=16, batch_size=2, seed=4, rank=r, world_size=world) for r in range(world)]
    single = Packer(docs, seq_len=16, batch_size=2 * world, seed=4)
    for _ in range(5):
        batches = [p.next_batch() for p in ranks]
        rows = [tuple(row) for b in batches for row in b["input_ids"].tolist()]
        assert len(set(rows)) == len(rows)  # disjoint (tokens are unique, so rows are too)
        merged = torch.cat([b["input_ids"] for b in batches])
        assert torch.equal(merged, single.next_batch()["input_ids"])
    assert all(p.state_dict() == single.state_dict() for p in ranks)
    with pytest.raises(UserError):
        Packer(docs, seq_len=16, batch_size=2, rank=3, world_size=3)


def test_document_mask_keeps_documents_apart():
    """Attention over a packed row equals attention over each document alone."""
    docs = documents(12, seed=2, max_len=9)
    batch = Packer(docs, seq_len=20, batch_size=2, split=False, seed=0).next_batch()
    mask = document_causal_mask(batch["doc_ids"])
    assert mask.shape == (2, 1, 20, 20) and mask.dtype == torch.bool
    torch.manual_seed(0)
    table = torch.randn(2000, 3, 8)  # token id -> (q, k, v)
    qkv = table[batch["input_ids"]]
    packed = F.scaled_dot_product_attention(qkv[:, None, :, 0], qkv[:, None, :, 1], qkv[:, None, :, 2],
                                            attn_mask=mask)[:, 0]
    for b in range(2):
        for doc in batch["doc_ids"][b].unique():
            where = batch["doc_ids"][b] == doc
            alone = table[batch["input_ids"][b][where]]
            single = F.scaled_dot_product_attention(alone[None, :, 0], alone[None, :, 1], alone[None, :, 2],
                                                    is_causal=True)[0]
            torch.testing.assert_close(packed[b][where], single)
