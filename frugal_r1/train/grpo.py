"""GRPO (R1-Zero): the policy samples G completions per prompt, rule-based rewards score them, and the
group-relative advantages weight a clipped policy-gradient loss (grpo_loss.py). A stage on the one loop.

One rollout batch = `prompts_per_step` prompts × G completions per rank, split into `train.grad_accum`
micro-batches; it serves μ = `rl.updates` optimizer steps. The old log-probs π_old are computed right
after the rollout with the training forward (same precision), so ρ = 1 exactly on the first update; with
μ = 1 they are the current log-probs detached (TRL's choice: ρ ≡ 1, the clip never binds). The reference
model (β > 0 only) is the --init model, frozen. Micro-batches carry each row's prompt length and length, so
log-probs are computed on the completions only, and a transformers Llama-family policy computes each of the
step's prompts once for its G completions (shared_prefix.py).

Everything a resumed run needs is in the stage state: the rollout counter (each rollout's sampling seed
is derived from it, the run seed and the rank), the micro-batches not yet consumed, and the previous
evaluation; the reference model is reloaded from --init. So a run killed at any moment and resumed ends
with the same weights as an uninterrupted one.

SFT replay (rl.sft_weight γ > 0, InstructGPT's PPO-ptx): each rollout batch also carries `rl.sft_rows` trace
examples (the rollout prompt of a task row and its trace completion, as SFT trains on), and the loss adds
γ × their token-mean NLL, so what RL does not sample keeps the SFT gradient it was trained with.

Health checks that act (the loop calls `health` after every step): entropy or completion length below
configured floors → stop or roll back; a NaN loss rolls back to the last checkpoint and stops
(train.nan_action = rollback); held-out accuracy falling while training reward rises → a warning.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence

from frugal_r1 import dist
from frugal_r1.chat import ANSWER_END, THINK_START
from frugal_r1.device import module_device
from frugal_r1.generate import SamplingParams
from frugal_r1.model import cpu_kernels
from frugal_r1.precision import module_uses_bf16
from frugal_r1.recipe import RLConfig
from frugal_r1.rewards.functions import BUILT_IN, RewardFn, combine, length_penalty
from frugal_r1.tasks import Task
from frugal_r1.tokenizer import encode_sft_example
from frugal_r1.train.corpus import completion_for, problem_stream
from frugal_r1.train.grpo_loss import advantages, loss_sum, normaliser, token_loss
from frugal_r1.train.policy import Policy
from frugal_r1.errors import UserError


@dataclass
class Rollout:
    """One micro-batch of completions, ready for the loss."""

    input_ids: torch.Tensor  # [B, T] prompt + completion, right-padded
    mask: torch.Tensor  # [B, T-1] 1.0 where position t predicts a completion token that counts
    advantages: torch.Tensor  # [B]
    old_logprobs: torch.Tensor | None  # [B, T-1] (μ > 1)
    ref_logprobs: torch.Tensor | None  # [B, T-1] (β > 0)
    prompt_lengths: torch.Tensor | None = None  # [B] (None in checkpoints from before they were kept)
    lengths: torch.Tensor | None = None  # [B] prompt + completion
    # SFT replay (rl.sft_weight > 0): this micro-batch's share of the step's trace examples, right-padded, and
    # the step's trace completion tokens (the NLL's denominator).
    sft_ids: torch.Tensor | None = None
    sft_prompt_lengths: torch.Tensor | None = None
    sft_lengths: torch.Tensor | None = None
    sft_tokens: int = 0

    def to_state(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items()}


class GRPOStage:
    name = "grpo"
    uses_every_parameter = False  # a frugal-r1 policy's MTP module takes no part in its log-probs

    def __init__(self, policy: Policy, rl: RLConfig, grad_accum: int, tasks: list[Task], eval_tasks: list[Task],
                 seed: int, out_dir: Path, info: dist.DistInfo, reference: torch.nn.Module | None = None,
                 user_rewards: dict[str, RewardFn] | None = None, bf16: bool | str = "auto",
                 task_weights: dict[str, float] | None = None):
        self.policy, self.rl, self.grad_accum, self.tasks, self.eval_tasks = policy, rl, grad_accum, tasks, eval_tasks
        self.problem = problem_stream(tasks, task_weights or {}, f"{seed}:grpo")
        self.sft_problem = problem_stream(tasks, rl.sft_task_weights or task_weights or {}, f"{seed}:grpo-sft",
                                          "rl.sft_task_weights")
        self.seed, self.out_dir, self.info, self.reference = seed, out_dir, info, reference
        self.bf16 = module_uses_bf16(bf16, policy.module)
        self._cpu_bf16 = self.bf16 and module_device(policy.module).type == "cpu"
        self.on_collapse = rl.on_collapse
        self.gate_bias_speed = rl.gate_bias_speed
        self.rewards: dict[str, RewardFn] = {}
        for name in rl.rewards:
            if name == "length":
                self.rewards[name] = length_penalty(rl.max_new_tokens, rl.overlong_buffer)
            elif name in BUILT_IN:
                self.rewards[name] = BUILT_IN[name]
            elif user_rewards and name in user_rewards:
                self.rewards[name] = user_rewards[name]
            else:
                raise UserError(f"rl.rewards: unknown reward {name!r}; built in: accuracy, format, language, length")
        if rl.overlong == "penalty" and "length" not in self.rewards:
            self.rewards["length"] = length_penalty(rl.max_new_tokens, rl.overlong_buffer)
        self.rollout_index = 0
        self.buffer: list[Rollout] = []
        self.served = 0
        self.previous_eval: dict[str, float] = {}
        self._metrics: dict[str, float] = {}
        self._token_stats = torch.zeros(5)  # kl, entropy, clipped low, clipped high, tokens
        self._extra_flops = 0.0
        self._train_reward_history: list[float] = []

    # --- the Stage protocol -----------------------------------------------------------------------------
    def next_batch(self) -> Rollout:
        if not self.buffer or self.served >= len(self.buffer) * self.rl.updates:
            self._rollout()
        batch = self.buffer[self.served % len(self.buffer)]
        self.served += 1
        return batch

    def count_targets(self, batch: Rollout) -> float:
        return normaliser(batch.mask, self.rl.aggregation, self.rl.max_new_tokens) if batch.mask.numel() else 0.0

    def count_tokens(self, batch: Rollout) -> int:
        """Token positions the training forward runs (a shared prompt once; DDP's wrapper runs them all)."""
        if self.info.enabled or batch.input_ids.numel() == 0:
            return batch.input_ids.numel()
        return self.policy.forward_tokens(self.policy.module, batch.input_ids, batch.prompt_lengths, batch.lengths)

    def loss(self, model: torch.nn.Module, batch: Rollout, denominator: float) -> tuple[torch.Tensor, dict[str, float]]:
        loss, parts = None, {}
        if batch.input_ids.numel():
            logprobs, entropy = self.policy.token_logprobs(model, batch.input_ids, True, batch.prompt_lengths,
                                                           batch.lengths)
            old = batch.old_logprobs if batch.old_logprobs is not None else logprobs.detach()
            token = token_loss(logprobs, old, batch.advantages, batch.mask, self.rl.epsilon_low,
                               self.rl.epsilon_high, self.rl.beta, batch.ref_logprobs)
            loss = loss_sum(token, batch.mask, self.rl.aggregation) / denominator
            with torch.no_grad():
                self._token_stats += torch.stack([token.kl.sum(), (entropy * batch.mask).sum(),
                                                  token.clipped_low.sum(), token.clipped_high.sum(),
                                                  batch.mask.sum()]).float().cpu()
        if batch.sft_ids is not None and batch.sft_ids.numel():
            ids, plen, lengths = batch.sft_ids, batch.sft_prompt_lengths, batch.sft_lengths
            nll = -self.policy.token_logprobs(model, ids, False, plen, lengths)[0].sum() / batch.sft_tokens
            loss = self.rl.sft_weight * nll if loss is None else loss + self.rl.sft_weight * nll
            parts["sft_loss"] = nll.item()
            self._extra_flops += 3 * 2 * _matmul_params(self.policy) * self.policy.forward_tokens(
                self.policy.module, ids, plen, lengths)
        if loss is None:  # nothing to train on in this micro-batch (dynamic sampling dropped every group)
            loss = sum(p.sum() for p in model.parameters()) * 0.0
        return loss, parts

    def step_metrics(self, record: dict[str, Any]) -> dict[str, float]:
        kl, entropy, low, high, tokens = (self._token_stats / self._token_stats[4].clamp(min=1)).tolist()
        self._token_stats.zero_()
        out = {**self._metrics, "kl": kl, "entropy": entropy, "clip_low_fraction": low, "clip_high_fraction": high,
               "clip_fraction": low + high}
        if "seconds_generation" in self._metrics:
            out["seconds_training"] = max(0.0, record["step_seconds"] - self._metrics["seconds_generation"]
                                          - self._metrics["seconds_scoring"])
        self._metrics = {}
        return out

    def extra_flops(self) -> float:
        flops, self._extra_flops = self._extra_flops, 0.0
        return flops

    def flops_per_token(self) -> float:
        """Training FLOPs per sequence token: forward + backward, plus π_old and π_ref forwards when used."""
        forward = 2 * _matmul_params(self.policy)
        passes = 3 + (1 if self.rl.updates > 1 else 0) + (1 if self.reference is not None else 0)
        return float(forward * passes)

    def health(self, record: dict[str, Any]) -> str | None:
        if self.rl.entropy_floor and record.get("entropy", 1e9) < self.rl.entropy_floor:
            return f"entropy collapsed: {record['entropy']:.4f} < rl.entropy_floor {self.rl.entropy_floor}"
        if self.rl.length_floor and record.get("completion_length_mean", 1e9) < self.rl.length_floor:
            return (f"completion length collapsed: {record['completion_length_mean']:.1f} tokens < "
                    f"rl.length_floor {self.rl.length_floor}")
        return None

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        from frugal_r1.eval import evaluate

        report = evaluate(self.policy.backend(), self.eval_tasks, n=self.rl.eval_n, samples=self.rl.eval_samples,
                          temperature=0.6, top_p=0.95, max_new_tokens=self.rl.max_new_tokens, seed=self.seed,
                          prompt_format=self.rl.prompt_format, batch_size=64, progress=False)
        self.policy.module.train()
        result = {f"eval_pass@1/{t.task}": t.pass_at_1 for t in report.tasks}
        result["eval_pass@1"] = report.pass_at_1
        result.update(self._reward_hacking_warning(result["eval_pass@1"]))
        self.previous_eval = {"eval_pass@1": result["eval_pass@1"], "train_reward": self._recent_train_reward()}
        return result

    def state_dict(self) -> dict[str, Any]:
        return {"rollout_index": self.rollout_index, "served": self.served,
                "buffer": [b.to_state() for b in self.buffer], "previous_eval": self.previous_eval,
                "train_rewards": list(self._train_reward_history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rollout_index, self.served = state["rollout_index"], state["served"]
        self.buffer = [Rollout(**b) for b in state["buffer"]]
        self.previous_eval = state["previous_eval"]
        self._train_reward_history = list(state["train_rewards"])

    # --- rollouts ---------------------------------------------------------------------------------------
    def _rows(self, count: int) -> list[dict[str, Any]]:
        rows = []
        for k in range(count):
            index = (self.rollout_index * self.info.world_size + self.info.rank) * count + k
            rows.append(self.problem(index)[1])
        return rows

    def _rollout(self) -> None:
        rl, policy = self.rl, self.policy
        started = time.perf_counter()
        scoring = 0.0
        kept: list[tuple[dict, Any, float]] = []
        stats: dict[str, list[float]] = {}
        all_rewards, all_lengths, truncated, zero_std_groups, groups = [], [], 0, 0, 0
        prompt_tokens = 0
        for round_ in range(rl.max_sampling_rounds if rl.dynamic_sampling else 1):
            rows = self._rows(rl.prompts_per_step)
            prompts = [policy.prompt(row, rl.prompt_format) for row in rows]
            seed = hash((self.seed, self.rollout_index, self.info.rank, round_)) % (2**31)
            params = SamplingParams(temperature=rl.temperature, top_p=rl.top_p, max_new_tokens=rl.max_new_tokens,
                                    n=rl.group_size, seed=seed,
                                    stop_strings=(ANSWER_END,) if rl.prompt_format == "r1_zero" else ())
            self.policy.module.eval()
            completions = policy.backend().generate(prompts, params)
            self._extra_flops += policy.generated_tokens(completions) * 2 * _matmul_params(policy)
            self.policy.module.train()
            tick = time.perf_counter()
            by_row = [rows[c.prompt_index] for c in completions]
            texts = [(c.text or "") + (ANSWER_END if c.stop == ANSWER_END else "") for c in completions]
            total, values = combine(self.rewards, rl.rewards, [prompts[c.prompt_index] for c in completions], texts,
                                    row=by_row, num_tokens=[len(c.token_ids) for c in completions],
                                    finish_reason=[c.finish_reason for c in completions], script=rl.language_script)
            scoring += time.perf_counter() - tick
            for name, v in values.items():
                stats.setdefault(name, []).extend(v)
            rewards = torch.tensor(total)
            adv = advantages(rewards, rl.group_size, rl.advantage_scale, negative_weight=rl.negative_weight)
            grouped = rewards.view(-1, rl.group_size)
            zero_std = (grouped.max(dim=1).values == grouped.min(dim=1).values)
            zero_std_groups += int(zero_std.sum())
            groups += grouped.shape[0]
            all_rewards += total
            all_lengths += [len(c.token_ids) for c in completions]
            prompt_tokens += sum(len(c.prompt_ids) for c in completions)
            truncated += sum(c.finish_reason == "length" for c in completions)
            for i, c in enumerate(completions):
                if rl.dynamic_sampling and zero_std[i // rl.group_size]:
                    continue
                kept.append((rows[c.prompt_index], c, float(adv[i])))
            if self.info.is_main and rl.samples_every and self.rollout_index % rl.samples_every == 0 and round_ == 0:
                self._write_samples(prompts, completions, total)
            if not rl.dynamic_sampling or len(kept) >= rl.prompts_per_step * rl.group_size:
                break
        generation = time.perf_counter() - started - scoring
        self.buffer = self._micro_batches(kept[: rl.prompts_per_step * rl.group_size])
        if rl.sft_weight > 0:
            self._add_sft_rows(self.buffer)
        trained_rows = sum(len(b.input_ids) for b in self.buffer)
        padded = {"train_length_mean": sum(b.input_ids.numel() for b in self.buffer) / trained_rows} if trained_rows else {}
        self.served = 0
        self.rollout_index += 1
        reward_mean = sum(all_rewards) / len(all_rewards)
        self._train_reward_history.append(reward_mean)
        self._metrics = {
            "reward_mean": reward_mean, "reward_std": float(torch.tensor(all_rewards).std(unbiased=False)),
            **{f"reward/{name}": sum(v) / len(v) for name, v in stats.items()},
            "accuracy": sum(stats["accuracy"]) / len(stats["accuracy"]) if "accuracy" in stats else float("nan"),
            "frac_reward_zero_std": zero_std_groups / max(1, groups),
            "completion_length_mean": sum(all_lengths) / len(all_lengths), "completion_length_max": max(all_lengths),
            "clipped_ratio": truncated / len(all_lengths), "kept_completions": len(kept),
            "sampling_rounds": round_ + 1, "prompt_length_mean": prompt_tokens / len(all_lengths),
            **padded,
            "seconds_generation": generation, "seconds_scoring": scoring,
        }

    def _micro_batches(self, kept: list[tuple[dict, Any, float]]) -> list[Rollout]:
        pad = self.policy.tokenizer.pad_token_id or 0
        # Micro-batches of similar lengths: each is padded to its longest sequence, and one truncated
        # completion would otherwise pad half the step's rows to max_new_tokens. Groups (G consecutive
        # completions of one prompt) stay together, ordered by their longest, so a Llama-family policy still
        # computes a shared prompt once. The step's gradient does not depend on the split (the loss
        # denominator is the whole step's).
        size = self.rl.group_size
        groups = sorted((kept[i:i + size] for i in range(0, len(kept), size)),
                        key=lambda group: max(len(c.prompt_ids) + len(c.token_ids) for _, c, _ in group))
        bounds = [round(i * len(groups) / self.grad_accum) for i in range(self.grad_accum + 1)]
        chunks = [[item for group in groups[a:b] for item in group] for a, b in zip(bounds, bounds[1:])]
        out = []
        for chunk in chunks:
            if not chunk:
                empty = torch.zeros(0, 0)
                out.append(Rollout(torch.zeros(0, 0, dtype=torch.long), empty, torch.zeros(0), None, None))
                continue
            sequences = [c.prompt_ids + c.token_ids for _, c, _ in chunk]
            width = max(len(s) for s in sequences)
            if self._cpu_bf16:  # a repeating shape for oneDNN's bf16 kernels (model/cpu_kernels.py)
                width = cpu_kernels.bucketed(width)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros(len(chunk), width - 1)
            for i, (_, c, _) in enumerate(chunk):
                seq = sequences[i]
                ids[i, : len(seq)] = torch.tensor(seq)
                if not (self.rl.overlong == "mask" and c.finish_reason == "length"):
                    mask[i, len(c.prompt_ids) - 1: len(seq) - 1] = 1.0
            adv = torch.tensor([a for _, _, a in chunk])
            prompt_lengths = torch.tensor([len(c.prompt_ids) for _, c, _ in chunk])
            lengths = torch.tensor([len(s) for s in sequences])
            old = ref = None
            if self.rl.updates > 1:
                old = self._frozen_logprobs(self.policy.module, ids, prompt_lengths, lengths)
            if self.reference is not None:
                ref = self._frozen_logprobs(self.reference, ids, prompt_lengths, lengths)
            out.append(Rollout(ids, mask, adv, old, ref, prompt_lengths, lengths))
        return out

    def _add_sft_rows(self, buffer: list[Rollout]) -> None:
        """Give the micro-batches the step's `rl.sft_rows` trace examples (round robin), each a row's prompt as
        the rollouts write it and its trace completion (opening `<think>` where the prompt does not), cut to the
        policy's context."""
        from frugal_r1.eval import opens_thinking

        policy, rows = self.policy, self.rl.sft_rows
        examples = []
        for k in range(rows):
            index = (self.rollout_index * self.info.world_size + self.info.rank) * rows + k
            task, row = self.sft_problem(index)
            prompt, completion = policy.prompt(row, self.rl.prompt_format), completion_for(task, row, self.seed, index)
            if not opens_thinking(prompt):  # R1-Zero's prompt, or a model's own chat template
                completion = f"{THINK_START}\n{completion}"
            ids, loss_mask = encode_sft_example(policy.tokenizer, prompt, completion)
            ids = ids[: policy.context_length]
            examples.append((ids, min(loss_mask.index(1), len(ids))))
        tokens = max(1, sum(len(ids) - start for ids, start in examples))
        pad = policy.tokenizer.pad_token_id or 0
        for i, batch in enumerate(buffer):
            share = examples[i::len(buffer)]
            if not share:
                continue
            batch.sft_ids = pad_sequence([torch.tensor(ids) for ids, _ in share], batch_first=True, padding_value=pad)
            batch.sft_prompt_lengths = torch.tensor([start for _, start in share])
            batch.sft_lengths = torch.tensor([len(ids) for ids, _ in share])
            batch.sft_tokens = tokens

    @torch.no_grad()
    def _frozen_logprobs(self, model: torch.nn.Module, ids: torch.Tensor, prompt_lengths: torch.Tensor,
                         lengths: torch.Tensor) -> torch.Tensor:
        """π_old or π_ref of a micro-batch, in the training forward's precision; on the CPU, like the rest of a
        rollout (the stage state is checkpointed)."""
        device = module_device(model)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.policy.token_logprobs(model, ids.to(device), False, prompt_lengths, lengths)[0].float().cpu()

    def _write_samples(self, prompts: list[str], completions, rewards: list[float]) -> None:
        lines = [f"\n## rollout {self.rollout_index}\n"]
        for i in range(0, min(len(completions), self.rl.samples_count * self.rl.group_size), self.rl.group_size):
            c = completions[i]
            lines.append(f"**prompt** `{prompts[c.prompt_index][-300:]!r}`\n\n**reward** "
                         f"{rewards[i]:.3f} · {len(c.token_ids)} tokens · {c.finish_reason}\n\n"
                         f"```\n{c.text}\n```\n")
        with open(self.out_dir / "samples.md", "a", encoding="utf-8") as f:
            f.write("\n".join(lines))

    def _recent_train_reward(self, window: int = 5) -> float:
        recent = self._train_reward_history[-window:]
        return sum(recent) / len(recent) if recent else float("nan")

    def _reward_hacking_warning(self, accuracy: float, tolerance: float = 0.05) -> dict[str, float]:
        if not self.previous_eval:
            return {}
        reward_up = self._recent_train_reward() - self.previous_eval["train_reward"]
        accuracy_down = self.previous_eval["eval_pass@1"] - accuracy
        if reward_up > tolerance and accuracy_down > tolerance:
            print(f"[grpo] warning: training reward rose by {reward_up:.3f} while held-out pass@1 fell by "
                  f"{accuracy_down:.3f} — possible reward hacking; read samples.md")
            return {"warning_reward_hacking": 1.0}
        return {"warning_reward_hacking": 0.0}


def _matmul_params(policy: Policy) -> int:
    cfg = getattr(policy.module, "config", None)
    if policy.kind == "frugal":
        from frugal_r1.model.flops import count_parameters

        return count_parameters(cfg).active_matmul
    return sum(p.numel() for name, p in policy.module.named_parameters() if "embed" not in name)
