"""The prefetcher hands out the packer's batches in order and resumes from what it handed out."""

import torch

from frugal_r1.data import Packer
from frugal_r1.errors import UserError
from frugal_r1.prefetch import Prefetcher


def source(index: int) -> list[int]:
    return [3 + (index * 7 + k) % 50 for k in range(5 + index % 11)]


def take(loader, n):
    return [loader.next_batch()["input_ids"].clone() for _ in range(n)]


def test_same_batches_and_exact_resume():
    plain = take(Packer(source, 32, 2, seed=1), 9)
    fetched = Prefetcher(Packer(source, 32, 2, seed=1), depth=3)
    first = take(fetched, 4)
    state = fetched.state_dict()  # after 4 handed out, though more were made
    fetched.close()
    resumed = Prefetcher(Packer(source, 32, 2, seed=1))
    resumed.load_state_dict(state)
    rest = take(resumed, 5)
    resumed.close()
    assert all(torch.equal(a, b) for a, b in zip(plain, first + rest))


def test_producer_errors_reach_the_consumer():
    def too_long(index):
        return list(range(100))

    fetched = Prefetcher(Packer(too_long, 16, 1, split=False))
    try:
        fetched.next_batch()
    except UserError as error:
        assert "does not fit" in str(error)
    else:
        raise AssertionError("expected a UserError")
