"""Project a run before it runs: FLOPs, time, dollars and kWh per stage, and whether each stage fits memory.

`project(stages, model_cfg, hardware, devices)` takes plain `Stage` descriptions:

- pretrain / sft: `tokens`, or `steps × batch_size × seq_len`. FLOPs = tokens × training FLOPs per token
  at `seq_len` (frugal_r1.model.flops: 6 × active matmul parameters + causal attention, MTP included when
  the config trains it). SFT computes over whole sequences even where the loss is masked.
- grpo: `prompts` (or `steps × prompts_per_step`) × `group_size` G sequences of `prompt_tokens` P plus
  `mean_new_tokens` M generated (memory uses `max_new_tokens`).
    rollouts  each sequence goes once through the model forward with the latent cache (absorbed MLA):
              2·N·(P+M) + L·attention(absorbed)·(P+M)(P+M+1)/2 FLOPs, × `sampling_rounds` (dynamic
              sampling generates again while too many groups have equal rewards; 1 without it), plus
              `eval_sequences` held-out completions (the stage's periodic and final evaluations)
    training  `updates` μ passes of forward + backward over `train_length` positions per sequence (no
              MTP; default P+M, more where micro-batches are padded to their longest sequence) of the
              `trained_fraction` of sequences that train (dynamic sampling drops equal-reward groups),
              plus one forward for the old policy's log-probs when μ > 1 and one for the reference model
              when `reference`; and `replay_sequences` SFT traces per rollout batch (rl.sft_rows) of
              `replay_length` positions (default P + max_new_tokens), in each of the μ passes.
  Before a run, rounds and fraction are 1 (the most a run can generate per round, all trained); after
  one, the report sets them, P, M and the padded training length from what the run measured.

Time = FLOPs / (devices × peak[precision] × MFU), with the training MFU for training passes and the
generation MFU for rollouts (decoding is memory-bound, so it reaches a smaller fraction of peak); both come
from the hardware profile unless the stage sets them. Device-hours × price = dollars; × power = kWh.

Memory per device (bytes), the check that warns before an out-of-memory:
    parameters   N × (4 fp32 master + the compute copy: 2 for bf16, 1 for fp8, none for fp32)
    gradients    N × 4 (fp32)
    optimizer    N × 8 (AdamW's two fp32 moments)
    reference    N × compute bytes (grpo with a reference model)
    activations  micro-batch tokens × activation bytes per token (below)
    kv_cache     rollout sequences per device × (P + max_new) × (kv_lora_rank + qk_rope_head_dim)
                 × compute bytes × (layers + MTP layers, as LatentCache allocates)
    total        parameters + gradients + optimizer + reference + max(activations, kv_cache)
                 (rollouts and training passes do not hold their buffers at the same time)
N counts the MTP modules. `sharded=True` (FSDP / ZeRO-3) divides the first four by the device count;
otherwise every device holds a replica (DDP).

Activations stored for the backward pass, per token per layer, in compute-precision elements (attention
through a fused kernel, so no T×T scores): the two norms' inputs and outputs 4d; q path (q_lora q_a out
and its norm 2·r_q) + H·(dn+dr); kv_a out r_kv+dr, its norm r_kv, kv_b out H·(dn+dv), the rotated keys
H·(dn+dr), the attention output H·dv; dense MLP 3·I; MoE k·(d + 3·moe_I) + n_shared·3·moe_I + E gate
scores. Plus the logits: V × (compute bytes + 8) per token (the logits, fp32 copy and log-softmax), once
per head (main and each MTP module). An estimate: allocator slack and temporaries come on top.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from frugal_r1.cost.hardware import BYTES_PER_ELEMENT, Hardware
from frugal_r1.errors import UserError
from frugal_r1.model.config import ModelConfig
from frugal_r1.model.flops import (FlopCounts, attention_flops_per_token, count_parameters,
                                   training_flops_per_token)

STAGE_KINDS = ("pretrain", "sft", "grpo")
HEADROOM = 0.9  # warn above this fraction of device memory


@dataclass(frozen=True)
class Stage:
    """One stage of a run; set the fields its kind uses (see the module docstring)."""

    kind: str
    name: str | None = None
    tokens: int | None = None
    steps: int | None = None
    batch_size: int | None = None  # sequences per optimizer step, all devices together
    seq_len: int = 1024
    micro_batch_size: int | None = None  # sequences per device per pass; default batch_size / devices
    prompts: int | None = None
    prompts_per_step: int | None = None
    group_size: int = 8
    prompt_tokens: int = 0
    mean_new_tokens: int | None = None  # default max_new_tokens
    max_new_tokens: int = 0
    updates: int = 1  # μ
    reference: bool = False
    sampling_rounds: float = 1.0  # mean rollout rounds per step (dynamic sampling)
    trained_fraction: float = 1.0  # of the sequences per step, those that reach the training passes
    train_length: int | None = None  # positions a training pass computes per sequence (padding included);
    # default prompt_tokens + mean_new_tokens
    eval_sequences: int = 0  # held-out completions the stage generates (GRPO's evaluations)
    replay_sequences: int = 0  # SFT traces trained with each rollout batch (rl.sft_rows when rl.sft_weight > 0)
    replay_length: int | None = None  # positions per trace; default prompt_tokens + max_new_tokens
    precision: str = "bf16"
    mfu: float | None = None
    generation_mfu: float | None = None

    def __post_init__(self) -> None:
        label = self.name or self.kind
        if self.kind not in STAGE_KINDS:
            raise UserError(f"stage {label}: kind must be one of {', '.join(STAGE_KINDS)}, got {self.kind!r}")
        if self.precision not in BYTES_PER_ELEMENT:
            raise UserError(f"stage {label}: precision must be one of {', '.join(BYTES_PER_ELEMENT)}")
        if self.kind == "grpo":
            if self.prompts is None and (self.steps is None or self.prompts_per_step is None):
                raise UserError(f"stage {label}: grpo needs prompts, or steps and prompts_per_step")
            if self.max_new_tokens <= 0 and not self.mean_new_tokens:
                raise UserError(f"stage {label}: grpo needs max_new_tokens")
            if self.sampling_rounds < 1:
                raise UserError(f"stage {label}: sampling_rounds must be >= 1, got {self.sampling_rounds}")
            if not 0 <= self.trained_fraction <= 1:
                raise UserError(f"stage {label}: trained_fraction must be in [0, 1], got {self.trained_fraction}")
            if self.eval_sequences < 0 or (self.train_length is not None and self.train_length < 1):
                raise UserError(f"stage {label}: eval_sequences must be >= 0 and train_length >= 1")
            if self.replay_sequences < 0 or (self.replay_length is not None and self.replay_length < 1):
                raise UserError(f"stage {label}: replay_sequences must be >= 0 and replay_length >= 1")
        elif self.tokens is None and (self.steps is None or self.batch_size is None):
            raise UserError(f"stage {label}: {self.kind} needs tokens, or steps and batch_size (× seq_len)")

    @property
    def label(self) -> str:
        return self.name or self.kind

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Stage":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"stage {values.get('name', values.get('kind', '?'))}: unknown key(s) "
                            f"{', '.join(unknown)}; known: {', '.join(sorted(known))}")
        if "kind" not in values:
            raise UserError("every stage needs a kind (pretrain, sft or grpo)")
        return cls(**values)


@dataclass(frozen=True)
class MemoryFit:
    """Bytes per device at a stage's peak."""

    parameters: int
    gradients: int
    optimizer: int
    reference: int
    activations: int
    kv_cache: int
    capacity: int

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer + self.reference + max(self.activations,
                                                                                         self.kv_cache)

    @property
    def fits(self) -> bool:
        return self.total <= self.capacity

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total, "fits": self.fits}


@dataclass(frozen=True)
class StageProjection:
    name: str
    kind: str
    tokens: int  # tokens through training passes (grpo: trained sequences × train_length × μ)
    generated_tokens: int
    train_flops: FlopCounts
    generation_flops: FlopCounts
    seconds: float  # wall clock
    devices: int
    usd: float
    kwh: float
    memory: MemoryFit
    warnings: list[str] = field(default_factory=list)

    @property
    def flops(self) -> int:
        return self.train_flops.total + self.generation_flops.total

    @property
    def gpu_hours(self) -> float:
        """Device-hours (machine-hours for the CPU profile)."""
        return self.seconds * self.devices / 3600

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "tokens": self.tokens,
                "generated_tokens": self.generated_tokens, "flops": self.flops,
                "train_flops": self.train_flops.to_dict(), "generation_flops": self.generation_flops.to_dict(),
                "hours": self.seconds / 3600, "gpu_hours": self.gpu_hours, "usd": self.usd, "kwh": self.kwh,
                "memory": self.memory.to_dict(), "warnings": list(self.warnings)}


@dataclass(frozen=True)
class Projection:
    hardware: Hardware
    devices: int
    stages: list[StageProjection]

    @property
    def flops(self) -> int:
        return sum(s.flops for s in self.stages)

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stages)

    @property
    def gpu_hours(self) -> float:
        return sum(s.gpu_hours for s in self.stages)

    @property
    def usd(self) -> float:
        return sum(s.usd for s in self.stages)

    @property
    def kwh(self) -> float:
        return sum(s.kwh for s in self.stages)

    @property
    def warnings(self) -> list[str]:
        return [w for s in self.stages for w in s.warnings]

    def to_dict(self) -> dict[str, Any]:
        return {"hardware": self.hardware.to_dict(), "devices": self.devices, "flops": self.flops,
                "hours": self.seconds / 3600, "gpu_hours": self.gpu_hours, "usd": self.usd, "kwh": self.kwh,
                "stages": [s.to_dict() for s in self.stages], "warnings": self.warnings}


# --------------------------------------------------------------------------------------------------
def _sequence_forward(cfg: ModelConfig, length: int, absorbed: bool) -> FlopCounts:
    """Forward FLOPs of one causal sequence of `length` tokens (contexts 1…length)."""
    matmul = 2 * count_parameters(cfg).active_matmul * length
    attention = cfg.num_hidden_layers * attention_flops_per_token(cfg, 1, absorbed) * length * (length + 1) // 2
    return FlopCounts(matmul, attention)


def activation_bytes_per_token(cfg: ModelConfig, precision: str = "bf16", include_mtp: bool = True) -> int:
    """Bytes kept for the backward pass per token, all layers and heads (see the module docstring)."""
    d, h = cfg.hidden_size, cfg.num_attention_heads
    q = (2 * cfg.q_lora_rank if cfg.q_lora_rank else 0) + h * cfg.qk_head_dim
    kv = (2 * cfg.kv_lora_rank + cfg.qk_rope_head_dim + h * (cfg.qk_nope_head_dim + cfg.v_head_dim)
          + h * cfg.qk_head_dim + h * cfg.v_head_dim)
    attention = 4 * d + q + kv
    dense = 3 * cfg.intermediate_size
    moe = (cfg.num_experts_per_tok * (d + 3 * cfg.moe_intermediate_size)
           + cfg.n_shared_experts * 3 * cfg.moe_intermediate_size + cfg.n_routed_experts)
    mtp = cfg.num_nextn_predict_layers if include_mtp else 0
    layers = range(cfg.num_hidden_layers + mtp)
    elements = sum(attention + (moe if cfg.is_moe_layer(i) else dense) for i in layers)
    compute = BYTES_PER_ELEMENT[precision]
    return elements * compute + (1 + mtp) * cfg.vocab_size * (compute + 8)


def memory_fit(cfg: ModelConfig, hardware: Hardware, devices: int = 1, *, precision: str = "bf16",
               activation_tokens: int = 0, kv_tokens: int = 0, reference: bool = False,
               include_mtp: bool = True, sharded: bool = False) -> MemoryFit:
    """Bytes per device for training with AdamW (see the module docstring for each term)."""
    counts = count_parameters(cfg)
    n = counts.total_with_mtp
    compute = BYTES_PER_ELEMENT[precision]
    shard = devices if sharded else 1
    cache_layers = cfg.num_hidden_layers + cfg.num_nextn_predict_layers
    return MemoryFit(
        parameters=math.ceil(n * (4 + (compute if compute < 4 else 0)) / shard),
        gradients=math.ceil(n * 4 / shard),
        optimizer=math.ceil(n * 8 / shard),
        reference=math.ceil(n * compute / shard) if reference else 0,
        activations=activation_tokens * activation_bytes_per_token(cfg, precision, include_mtp),
        kv_cache=kv_tokens * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * compute * cache_layers,
        capacity=hardware.memory_bytes,
    )


def _warnings(stage: Stage, fit: MemoryFit, hardware: Hardware) -> list[str]:
    need, have = fit.total / 1e9, fit.capacity / 1e9
    if not fit.fits:
        return [f"{stage.label}: needs {need:,.1f} GB per device but {hardware.name} has {have:,.1f} GB — "
                f"out of memory; shard (FSDP), add devices or lower micro_batch_size"]
    if fit.total > HEADROOM * fit.capacity:
        return [f"{stage.label}: needs {need:,.1f} GB of {hardware.name}'s {have:,.1f} GB, "
                f"over {HEADROOM:.0%}; allocator slack may still run out of memory"]
    return []


def project_stage(stage: Stage, cfg: ModelConfig, hardware: Hardware, devices: int = 1, *,
                  sharded: bool = False) -> StageProjection:
    peak = hardware.peak(stage.precision) * devices
    mfu = stage.mfu or hardware.training_mfu(stage.precision)
    generation_mfu = stage.generation_mfu or hardware.generation_mfu
    zero = FlopCounts(0, 0)
    if stage.kind == "grpo":
        per_step = stage.prompts_per_step or stage.prompts
        prompts = stage.prompts if stage.prompts is not None else stage.steps * stage.prompts_per_step
        sequences = prompts * stage.group_size
        new_tokens = stage.mean_new_tokens or stage.max_new_tokens
        length = stage.prompt_tokens + new_tokens
        generated_sequences = round(sequences * stage.sampling_rounds) + stage.eval_sequences
        trained = round(sequences * stage.trained_fraction)
        train_length = stage.train_length or length
        tokens = trained * train_length * stage.updates
        generation = _sequence_forward(cfg, length, absorbed=True) * generated_sequences
        extra_forwards = (stage.updates > 1) + stage.reference
        train = (training_flops_per_token(cfg, train_length, include_mtp=False) * tokens
                 + _sequence_forward(cfg, train_length, absorbed=False) * (trained * extra_forwards))
        if stage.replay_sequences:
            replay_length = stage.replay_length or stage.prompt_tokens + stage.max_new_tokens
            replayed = math.ceil(prompts / per_step) * stage.replay_sequences * replay_length * stage.updates
            train = train + training_flops_per_token(cfg, replay_length, include_mtp=False) * replayed
            tokens += replayed
        rollouts_per_device = math.ceil(per_step * stage.group_size / devices)
        micro = stage.micro_batch_size or rollouts_per_device
        max_length = stage.prompt_tokens + stage.max_new_tokens
        fit = memory_fit(cfg, hardware, devices, precision=stage.precision, activation_tokens=micro * max_length,
                         kv_tokens=rollouts_per_device * max_length, reference=stage.reference,
                         include_mtp=False, sharded=sharded)
        generated = generated_sequences * new_tokens
    else:
        tokens = stage.tokens if stage.tokens is not None else stage.steps * stage.batch_size * stage.seq_len
        include_mtp = cfg.num_nextn_predict_layers > 0 and cfg.mtp_loss_weight > 0
        train, generation, generated = training_flops_per_token(cfg, stage.seq_len, include_mtp) * tokens, zero, 0
        micro = stage.micro_batch_size or math.ceil((stage.batch_size or 1) / devices)
        fit = memory_fit(cfg, hardware, devices, precision=stage.precision,
                         activation_tokens=micro * stage.seq_len, include_mtp=include_mtp, sharded=sharded)
    generation_peak = hardware.peak(hardware.generation_precision or stage.precision) * devices
    seconds = train.total / (peak * mfu) + generation.total / (generation_peak * generation_mfu)
    device_hours = seconds * devices / 3600
    return StageProjection(
        name=stage.label, kind=stage.kind, tokens=tokens, generated_tokens=generated, train_flops=train,
        generation_flops=generation, seconds=seconds, devices=devices, usd=device_hours * hardware.usd_per_hour,
        kwh=device_hours * hardware.power_w / 1000, memory=fit, warnings=_warnings(stage, fit, hardware),
    )


def project(stages: list[Stage], model_cfg: ModelConfig, hardware: Hardware, devices: int = 1, *,
            sharded: bool = False) -> Projection:
    """Time, dollars, kWh and memory fit of each stage on `devices` × `hardware`."""
    if devices < 1:
        raise UserError(f"devices must be >= 1, got {devices}")
    return Projection(hardware, devices, [project_stage(s, model_cfg, hardware, devices, sharded=sharded)
                                          for s in stages])


__all__ = ["MemoryFit", "Projection", "STAGE_KINDS", "Stage", "StageProjection", "activation_bytes_per_token",
           "memory_fit", "project", "project_stage"]
