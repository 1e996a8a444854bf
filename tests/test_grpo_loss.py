"""GRPO's loss math against a hand-computed example, and the reward functions."""

from __future__ import annotations

import math

import pytest
import torch

from frugal_r1.rewards.functions import combine, format_reward, language_reward, length_penalty
from frugal_r1.train.grpo_loss import advantages, grpo_loss


def test_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0])  # two prompts, G = 2
    eps = 1e-4
    assert advantages(rewards, 2, "group").tolist() == pytest.approx([0.5 / (0.5 + eps), -0.5 / (0.5 + eps), 0, 0])
    assert advantages(rewards, 2, "none").tolist() == pytest.approx([0.5, -0.5, 0.0, 0.0])
    batch_std = math.sqrt((3 * 0.25**2 + 0.75**2) / 4)
    assert advantages(rewards, 2, "batch").tolist() == pytest.approx(
        [0.5 / (batch_std + eps), -0.5 / (batch_std + eps), 0, 0])


def test_negative_weight_scales_only_negative_advantages():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0])  # one prompt, G = 4: mean 0.25, std sqrt(0.1875)
    std = math.sqrt(0.1875) + 1e-4
    assert advantages(rewards, 4, "group", negative_weight=0.1).tolist() == pytest.approx(
        [0.75 / std, -0.1 * 0.25 / std, -0.1 * 0.25 / std, -0.1 * 0.25 / std])
    assert advantages(rewards, 4, "none", negative_weight=0.0).tolist() == pytest.approx([0.75, 0.0, 0.0, 0.0])


# Two completions, three token slots each; the second has only two real tokens.
LOGP = torch.tensor([[-1.0, -0.5, -2.0], [-1.0, -1.5, 0.0]])
OLD = torch.tensor([[-1.5, -0.5, -1.0], [-0.5, -1.5, 0.0]])  # ratios: e^.5, 1, e^-1 | e^-.5, 1, (pad)
REF = torch.tensor([[-1.2, -0.5, -2.0], [-1.0, -1.0, 0.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
ADV = torch.tensor([1.0, -2.0])
EL, EH, BETA = 0.2, 0.28, 0.1


def hand_token_losses() -> list[list[float]]:
    """ℓ = −min(ρA, clip(ρ, 0.8, 1.28)A) + β(e^{ref−logp} − (ref−logp) − 1), written out per token."""
    def k3(ref, logp):
        d = ref - logp
        return math.exp(d) - d - 1

    row0 = [
        -min(math.exp(0.5) * 1, 1.28 * 1) + BETA * k3(-1.2, -1.0),   # ρ=1.65 > 1.28, A>0: clipped high
        -min(1.0 * 1, 1.0 * 1) + BETA * k3(-0.5, -0.5),              # ρ=1
        -min(math.exp(-1.0) * 1, 0.8 * 1) + BETA * k3(-2.0, -2.0),   # ρ=0.37 < 0.8 but A>0: unclipped (min)
    ]
    row1 = [
        -min(math.exp(-0.5) * -2, 0.8 * -2) + BETA * k3(-1.0, -1.0),  # ρ=0.61 < 0.8, A<0: clipped low
        -min(1.0 * -2, 1.0 * -2) + BETA * k3(-1.0, -1.5),
    ]
    return [row0, row1]


def test_loss_aggregations_by_hand():
    row0, row1 = hand_token_losses()
    sequence = (sum(row0) / 3 + sum(row1) / 2) / 2
    token = (sum(row0) + sum(row1)) / 5
    constant = (sum(row0) + sum(row1)) / (2 * 4)  # 2 completions × max_new_tokens 4
    kwargs = dict(epsilon_low=EL, epsilon_high=EH, beta=BETA, ref_logprobs=REF)
    assert grpo_loss(LOGP, OLD, ADV, MASK, aggregation="sequence", **kwargs).item() == pytest.approx(sequence, rel=1e-6)
    assert grpo_loss(LOGP, OLD, ADV, MASK, aggregation="token", **kwargs).item() == pytest.approx(token, rel=1e-6)
    assert grpo_loss(LOGP, OLD, ADV, MASK, aggregation="constant", max_new_tokens=4, **kwargs).item() == \
        pytest.approx(constant, rel=1e-6)


def test_clipping_sides_and_gradient():
    from frugal_r1.train.grpo_loss import token_loss

    logp = LOGP.clone().requires_grad_(True)
    token = token_loss(logp, OLD, ADV, MASK, EL, EH)
    assert token.clipped_high.tolist() == [[True, False, False], [False, False, False]]
    assert token.clipped_low.tolist() == [[False, False, False], [True, False, False]]
    token.loss.sum().backward()
    # clipped tokens carry no gradient; the unclipped ρ=e^-1 token has dℓ/dlogp = −ρA
    assert logp.grad[0, 0] == 0 and logp.grad[1, 0] == 0
    assert logp.grad[0, 2].item() == pytest.approx(-math.exp(-1.0))
    assert logp.grad[1, 2] == 0  # padding


def test_no_kl_without_beta_and_ratio_one_is_policy_gradient():
    loss = grpo_loss(LOGP, LOGP, ADV, MASK, epsilon_low=EL, epsilon_high=EH, aggregation="token")
    assert loss.item() == pytest.approx(-(1.0 * 3 + -2.0 * 2) / 5)


def test_reward_functions():
    good = "12 + 5 = 17\n</think>\n<answer>17</answer>"
    assert format_reward([], [good, "no tags", "<think>x</think><answer>1</answer>",
                              "</think><answer>1</answer> trailing", "</think><answer>1</answer><answer>2</answer>"]) \
        == [1.0, 0.0, 1.0, 0.0, 0.0]
    assert language_reward([], ["hello world</think>", "héllo привет</think>", "12 + 3</think>"]) == \
        [1.0, pytest.approx(5 / 11), 1.0]
    length = length_penalty(max_new_tokens=100, buffer=20)
    assert length([], ["", "", ""], num_tokens=[80, 90, 100]) == [0.0, -0.5, -1.0]
    rows = [{"prompt": "1+16", "answer": "17", "metadata": {"task": "chain_sum", "verifier": "numeric"}}]
    total, values = combine({"accuracy": __import__("frugal_r1.rewards.functions", fromlist=["x"]).accuracy_reward,
                             "format": format_reward}, {"accuracy": 1.0, "format": 0.5}, ["q"], [good], row=rows)
    assert values == {"accuracy": [1.0], "format": [1.0]} and total == [1.5]


def test_user_reward_in_trl_interface():
    def trl_style(prompts, completions, **kwargs):
        return [float(len(c)) for c in completions]

    total, values = combine({"mine": trl_style}, {"mine": 2.0}, ["p", "q"], ["ab", "abc"], row=[{}, {}])
    assert total == [4.0, 6.0]
