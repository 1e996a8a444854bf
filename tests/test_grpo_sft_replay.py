"""GRPO's SFT replay term (rl.sft_weight, PPO-ptx): the trace rows a step gets, and the loss they add."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from frugal_r1.recipe import RLConfig
from frugal_r1.tasks import load_task
from frugal_r1.tokenizer import encode_sft_example
from frugal_r1.train.corpus import completion_for, problem_stream
from frugal_r1.train.grpo import GRPOStage, Rollout
from frugal_r1.train.policy import Policy

from test_grpo import tiny_frugal, tiny_qwen  # noqa: F401  (the module-scoped fixtures)


def _stage(policy: Policy, rl: RLConfig, rollout_index: int = 0):
    tasks = [load_task("chain_sum", size=1000, seed=0), load_task("basic_arithmetic", size=1000, seed=0)]
    stage = SimpleNamespace(policy=policy, rl=rl, seed=3, rollout_index=rollout_index, _extra_flops=0.0,
                            info=SimpleNamespace(world_size=1, rank=0), _token_stats=torch.zeros(5),
                            sft_problem=problem_stream(tasks, rl.sft_task_weights, "3:grpo-sft"))
    return stage


def _empty_batches(count: int) -> list[Rollout]:
    return [Rollout(torch.zeros(0, 0, dtype=torch.long), torch.zeros(0, 0), torch.zeros(0), None, None)
            for _ in range(count)]


def test_sft_rows_are_the_rollout_prompts_with_their_traces_split_over_micro_batches(tiny_frugal):  # noqa: F811
    policy = Policy.load(tiny_frugal)
    rl = RLConfig(sft_weight=0.5, sft_rows=3)
    stage = _stage(policy, rl, rollout_index=2)
    batches = _empty_batches(2)
    GRPOStage._add_sft_rows(stage, batches)
    # Rows 6, 7, 8 of the replay stream (rollout 2 × 3 rows), round robin: 6 and 8 in the first micro-batch.
    expected = []
    for index in (6, 7, 8):
        task, row = stage.sft_problem(index)
        expected.append(encode_sft_example(policy.tokenizer, policy.prompt(row), completion_for(task, row, 3, index)))
    assert [len(b.sft_ids) for b in batches] == [2, 1]
    for batch, items in zip(batches, (expected[0::2], expected[1::2])):
        for j, (ids, mask) in enumerate(items):
            assert batch.sft_ids[j, : len(ids)].tolist() == ids
            assert batch.sft_lengths[j] == len(ids) and batch.sft_prompt_lengths[j] == mask.index(1)
    completion_tokens = sum(sum(mask) for _, mask in expected)
    assert all(b.sft_tokens == completion_tokens for b in batches)


@pytest.mark.parametrize("init", ["tiny_frugal", "tiny_qwen"])
def test_sft_loss_is_the_weighted_token_mean_nll_of_the_trace_completions(init, request):
    policy = Policy.load(request.getfixturevalue(init))
    rl = RLConfig(sft_weight=0.5, sft_rows=2)
    stage = _stage(policy, rl)
    stage.policy.module.train()
    batch = _empty_batches(1)[0]
    GRPOStage._add_sft_rows(stage, [batch])
    loss, parts = GRPOStage.loss(stage, policy.module, batch, denominator=1.0)

    # By hand: the model's full forward, -log p of every completion token (and its eos), averaged, times 0.5.
    nll, count = 0.0, 0
    for ids, start, length in zip(batch.sft_ids, batch.sft_prompt_lengths, batch.sft_lengths):
        logits = policy.module(ids[None, :length]).logits[0].float()
        logp = F.log_softmax(logits[start - 1: length - 1], dim=-1)
        nll -= logp.gather(-1, ids[start:length, None]).sum().item()
        count += int(length - start)
    assert loss.item() == pytest.approx(0.5 * nll / count, rel=1e-4)
    assert parts["sft_loss"] == pytest.approx(nll / count, rel=1e-4)
    assert stage._extra_flops > 0
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.module.parameters())


def test_without_sft_rows_the_loss_is_the_grpo_loss_alone(tiny_frugal):  # noqa: F811
    policy = Policy.load(tiny_frugal)
    stage = _stage(policy, RLConfig(sft_weight=0.2, sft_rows=1))
    ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 9, 9]])
    mask = torch.tensor([[0.0, 1, 1, 1], [0.0, 1, 1, 1]])
    batch = Rollout(ids, mask, torch.tensor([1.0, -1.0]), None, None, torch.tensor([2, 2]), torch.tensor([5, 5]))
    plain, parts = GRPOStage.loss(stage, policy.module, batch, denominator=6.0)
    assert parts == {}
    with_replay = Rollout(**{**vars(batch)})
    GRPOStage._add_sft_rows(stage, [with_replay])
    replayed, parts = GRPOStage.loss(stage, policy.module, with_replay, denominator=6.0)
    assert replayed.item() == pytest.approx(plain.item() + 0.2 * parts["sft_loss"], rel=1e-5, abs=1e-7)


def test_a_prompt_that_does_not_open_thinking_gets_a_completion_that_does(tiny_qwen):  # noqa: F811
    policy = Policy.load(tiny_qwen)  # its own chat template ends in "<|assistant|>"
    batch = _empty_batches(1)[0]
    GRPOStage._add_sft_rows(_stage(policy, RLConfig(sft_weight=1.0, sft_rows=1)), [batch])
    completion = batch.sft_ids[0, batch.sft_prompt_lengths[0]: batch.sft_lengths[0]].tolist()
    assert policy.tokenizer.decode(completion).startswith("<think>\n")


def test_add_sft_rows_is_deterministic_in_the_rollout_index(tiny_frugal):  # noqa: F811
    policy = Policy.load(tiny_frugal)
    rl = RLConfig(sft_weight=1.0, sft_rows=2)
    first, again, later = _empty_batches(1), _empty_batches(1), _empty_batches(1)
    GRPOStage._add_sft_rows(_stage(policy, rl, 4), first)
    GRPOStage._add_sft_rows(_stage(policy, rl, 4), again)
    GRPOStage._add_sft_rows(_stage(policy, rl, 5), later)
    assert torch.equal(first[0].sft_ids, again[0].sft_ids)
    assert first[0].sft_ids.tolist() != later[0].sft_ids.tolist()
