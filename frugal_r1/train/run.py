"""Running a pretrain or SFT stage end to end: config → tokenizer → model → data → loop → run directory.

The run directory (`--out`) receives everything: `run_config.json` (the resolved config), `tokenizer/`,
`checkpoints/`, `metrics.jsonl`, `tensorboard/`, `ledger.json`, and `final/` — a model directory that
transformers' AutoModelForCausalLM and AutoTokenizer load. An existing non-empty `--out` is continued only
with `--resume`; otherwise the command refuses rather than overwrite it.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from frugal_r1 import dist
from frugal_r1.atomic import atomic_write_bytes
from frugal_r1.data import Packer
from frugal_r1.device import device_memory_bytes, resolve_device
from frugal_r1.errors import UserError
from frugal_r1.cost.hardware import Hardware
from frugal_r1.ledger import Ledger, stage_hardware
from frugal_r1.model.config import ModelConfig
from frugal_r1.model.hf import read_deepseek_config
from frugal_r1.model.transformer import DeepSeekV3
from frugal_r1.precision import module_uses_bf16
from frugal_r1.recipe import StageConfig, check_train, config_differences
from frugal_r1.tokenizer import (encode_pretrain_document, encode_sft_example, load_tokenizer, save_tokenizer,
                                 train_tokenizer)
from frugal_r1.train.corpus import open_tasks, pretrain_documents, sft_pairs
from frugal_r1.train.lm_stage import LMStage
from frugal_r1.train.loop import Trainer


@dataclass
class StageResult:
    out_dir: Path
    final_dir: Path
    eval: dict[str, float]
    ledger: dict


def check_resume(out_dir: Path, cfg: StageConfig, init: str | None) -> None:
    """A run continues only under the settings and --init it was started with; else say which differ."""
    saved = json.loads((out_dir / "run_config.json").read_text())
    changed = config_differences(saved.get("config"), cfg)
    if saved.get("init") != init:
        changed.append(f"--init (was {saved.get('init')})")
    if changed:
        raise UserError(f"--resume: {out_dir} was started with other settings: {', '.join(changed)} "
                        f"(see {out_dir / 'run_config.json'})")


def prepare_out_dir(out: str | Path, resume: bool) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file")
    if out.exists() and any(out.iterdir()) and not resume:
        raise UserError(f"--out {out} exists and is not empty; pass --resume to continue it or choose another --out")
    if resume and not (out / "run_config.json").exists():
        raise UserError(f"--resume: {out} holds no run to continue (no run_config.json)")
    out.mkdir(parents=True, exist_ok=True)
    return out


def check_fits(model_cfg: ModelConfig, device: torch.device, hardware: Hardware) -> None:
    """Refuse, before building it, a model whose fp32 weights, gradients and AdamW state alone exceed the device's
    memory (the 671B preset on a laptop), instead of swapping the machine to a halt."""
    from frugal_r1.cost.planner import memory_fit
    from frugal_r1.model.flops import count_parameters

    available = device_memory_bytes(device)
    fit = memory_fit(model_cfg, hardware, precision="fp32")
    needed = fit.parameters + fit.gradients + fit.optimizer
    if available and needed > available:
        total = count_parameters(model_cfg).total_with_mtp
        raise UserError(f"a {total / 1e9:,.2f}B-parameter model needs {needed / 1e9:,.0f} GB for its weights, "
                        f"gradients and AdamW state; {device} has {available / 1e9:,.0f} GB")


def no_empty_out_on_refusal(run):
    """Decorate a stage's run function (it takes `out`): when it refuses with a UserError before writing anything,
    the --out directory it created is removed again, so a corrected command can use the same --out."""

    @functools.wraps(run)
    def wrapper(*args, **kwargs):
        out = Path(inspect.signature(run).bind(*args, **kwargs).arguments["out"])
        existed = out.exists()
        try:
            return run(*args, **kwargs)
        except UserError:
            if not existed:
                with contextlib.suppress(OSError):  # every rank of a torchrun refuses alike; one removes it
                    if not any(out.iterdir()):
                        out.rmdir()
            raise

    return wrapper


@no_empty_out_on_refusal
def run_lm_stage(kind: str, cfg: StageConfig, out: str | Path, resume: bool = False,
                 init: str | None = None) -> StageResult:
    """kind is "pretrain" or "sft"."""
    info = dist.setup(cfg.train.device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device, info.local_rank)
    out_dir = prepare_out_dir(out, resume) if info.is_main else Path(out)
    dist.barrier(info)
    if resume:
        check_resume(out_dir, cfg, init)
    if kind == "sft" and (init is None or not Path(init).is_dir()):
        raise UserError(f"--init {init} is not a model directory" if init else "sft needs --init MODEL_DIR")
    seed = cfg.train.seed
    tasks = open_tasks(cfg.data, seed)
    eval_seed = seed + cfg.data.eval_seed_offset
    eval_tasks = open_tasks(cfg.data, eval_seed)

    # Measure this machine's peak before the prefetch thread starts competing for the cores.
    hardware = stage_hardware(cfg.ledger, device.type)
    check_fits(cfg.model_config(vocab_size=cfg.data.vocab_size) if kind == "pretrain"
               else read_deepseek_config(init, "--init "), device, hardware)
    tokenizer = _tokenizer(kind, cfg, out_dir, init, tasks, seed, info)
    if kind == "pretrain":
        torch.manual_seed(seed)
        vocab = _round_up(len(tokenizer), 64)
        model_cfg = cfg.model_config(vocab_size=vocab, bos_token_id=tokenizer.bos_token_id,
                                     eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        model = DeepSeekV3(model_cfg)
        docs, eval_docs = pretrain_documents(tasks, cfg.data.task_weights, seed), \
            pretrain_documents(eval_tasks, cfg.data.task_weights, eval_seed)
        source = lambda i: encode_pretrain_document(tokenizer, docs(i))  # noqa: E731
        eval_source = lambda i: encode_pretrain_document(tokenizer, eval_docs(i))  # noqa: E731
    else:
        model = DeepSeekV3.from_pretrained(init)
        model_cfg = model.config
        pairs, eval_pairs = sft_pairs(tasks, cfg.data.task_weights, seed), \
            sft_pairs(eval_tasks, cfg.data.task_weights, eval_seed)
        source = lambda i: encode_sft_example(tokenizer, *pairs(i))  # noqa: E731
        eval_source = lambda i: encode_sft_example(tokenizer, *eval_pairs(i))  # noqa: E731
    model.to(device)  # initialised on the CPU, so a seed gives the same weights on every device
    if cfg.data.seq_len > model_cfg.max_position_embeddings:
        raise UserError(f"data.seq_len {cfg.data.seq_len} exceeds the model's max_position_embeddings "
                        f"{model_cfg.max_position_embeddings}")
    split = kind == "pretrain" and cfg.data.split_documents
    packer = Packer(source, cfg.data.seq_len, cfg.data.batch_size, seed=seed, split=split,
                    drop_long=cfg.data.drop_long, pad_id=tokenizer.pad_token_id, rank=info.rank,
                    world_size=info.world_size)
    eval_packer = Packer(eval_source, cfg.data.seq_len, cfg.data.batch_size, seed=eval_seed, split=split,
                         drop_long=cfg.data.drop_long, pad_id=tokenizer.pad_token_id)
    eval_batches = [eval_packer.next_batch() for _ in range(cfg.train.eval_batches)]
    if cfg.data.prefetch:
        from frugal_r1.prefetch import Prefetcher

        packer = Prefetcher(packer, cfg.data.prefetch)
    stage = LMStage(kind, model_cfg, packer, eval_batches, cfg.train.grad_accum)

    bf16 = module_uses_bf16(cfg.train.bf16, model)
    ledger = Ledger(hardware, precision="bf16" if bf16 else "fp32", devices=info.world_size)
    if info.is_main and not resume:
        record = {"stage": kind, "init": init, "config": cfg.to_dict(), "model": model_cfg.to_dict(),
                  "world_size": info.world_size, "threads": torch.get_num_threads()}
        atomic_write_bytes(out_dir / "run_config.json", json.dumps(record, indent=2).encode())

    trainer = Trainer(model, stage, cfg.train, out_dir, ledger, info)
    try:
        final_eval = trainer.run(resume=resume)
        if hasattr(packer, "close"):
            packer.close()
        final_dir = out_dir / "final"
        summary = ledger.summary()
        if info.is_main:
            model.save_pretrained(final_dir)
            save_tokenizer(tokenizer, final_dir)
            ledger.write(out_dir / "ledger.json", kind, {"steps": trainer.step, "final_eval": final_eval})
            print(ledger.line(kind))
        dist.barrier(info)
    finally:
        dist.teardown()
    return StageResult(out_dir, final_dir, final_eval, summary)


def _tokenizer(kind, cfg: StageConfig, out_dir: Path, init, tasks, seed, info: dist.DistInfo):
    if cfg.data.tokenizer:
        return load_tokenizer(cfg.data.tokenizer)
    if kind == "sft":
        return load_tokenizer(init) if init else None
    saved = out_dir / "tokenizer"
    if info.is_main and not (saved / "tokenizer.json").exists():
        docs = pretrain_documents(tasks, cfg.data.task_weights, seed + 7919)
        texts = (docs(i) for i in range(cfg.data.tokenizer_documents))
        tokenizer = train_tokenizer(texts, cfg.data.vocab_size,
                                    model_max_length=cfg.model_config().max_position_embeddings)
        save_tokenizer(tokenizer, saved)
    dist.barrier(info)
    return load_tokenizer(saved)


def _round_up(value: int, multiple: int) -> int:
    return (value + multiple - 1) // multiple * multiple


def apply_common_flags(cfg: StageConfig, args) -> StageConfig:
    """--preset/--task/--steps/--seed/--save-every flags override the recipe."""
    if getattr(args, "preset", None):
        cfg.model = {**cfg.model, "preset": args.preset}
        cfg.model_config()
    if getattr(args, "task", None):
        cfg.data.tasks = list(args.task)
        # The recipe's per-task settings for tasks --task left out no longer apply.
        for table in ("task_config", "task_weights", "task_sizes"):
            setattr(cfg.data, table, {k: v for k, v in getattr(cfg.data, table).items() if k in cfg.data.tasks})
    if getattr(args, "steps", None) is not None:
        if args.steps < 1:
            raise UserError(f"--steps must be >= 1, got {args.steps}")
        cfg.train.steps = args.steps
    if getattr(args, "seed", None) is not None:
        cfg.train.seed = args.seed
    if getattr(args, "save_every", None) is not None:
        cfg.train.save_every = args.save_every
    threads = os.environ.get("FRUGAL_R1_THREADS")
    if threads:
        if not (threads.isascii() and threads.isdigit()):
            raise UserError(f"FRUGAL_R1_THREADS must be a whole number >= 0, got {threads!r}")
        cfg.train.threads = int(threads)
    check_train(cfg.train)  # the flags' values too
    return cfg
