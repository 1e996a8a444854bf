"""`frugal-r1 cost`: price a run before it runs.

    frugal-r1 cost deepseek-v3 [--mfu 0.4] [--hardware H800]    the V3 table, reported and derived
    frugal-r1 cost hardware [--hardware-file F]                  the profiles, with this CPU measured
    frugal-r1 cost --recipe RECIPE.toml [--hardware cpu] [--devices N] [--sharded]
                                                                 time, $, kWh and memory per stage

Every view takes `--json`: the projections' keys are gpu_hours, usd, kwh, flops and a `stages` list with the same
keys; the hardware view's is a `hardware` list of profiles.

Recipes. A run recipe (recipes/speedrun.toml, any `--config` file with [pretrain.*] / [sft.*] / [grpo.*]
tables) is priced stage by stage from its own settings (frugal_r1.cost.run_recipe). For runs that do not exist
as recipes yet, a planner recipe names the stages directly:

    [model]
    preset = "small"            # a frugal_r1.model preset; any other key overrides a ModelConfig field

    [[stage]]                   # one table per stage, in order; keys are frugal_r1.cost.planner.Stage's
    kind = "pretrain"           # pretrain | sft | grpo
    steps = 2000
    batch_size = 32             # sequences per step, all devices together
    seq_len = 512

    [[stage]]
    kind = "grpo"
    prompts = 2048              # or steps + prompts_per_step
    prompts_per_step = 16
    group_size = 8
    prompt_tokens = 64
    max_new_tokens = 256
    mean_new_tokens = 160

`load_recipe` tells the two apart: a planner recipe has [[stage]] tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tomllib
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from frugal_r1.cost import deepseek_v3
from frugal_r1.cost.hardware import Hardware, get_hardware, load_profiles
from frugal_r1.cost.planner import Projection, Stage, project
from frugal_r1.cost.run_recipe import recipe_stages
from frugal_r1.errors import UserError
from frugal_r1.model.config import ModelConfig, preset


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("cost", help="price a recipe, DeepSeek-V3's run, or list hardware profiles",
                                   description=__doc__.split("\n\n")[1], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("view", nargs="?", choices=["deepseek-v3", "hardware"],
                        help="deepseek-v3: the reported table and its derivation; hardware: the profiles")
    parser.add_argument("--recipe", type=Path, help="project this recipe (TOML) stage by stage")
    parser.add_argument("--hardware", help="profile name (H800, H100, H200, A100, cpu, or one of --hardware-file); "
                                           "default H800 for deepseek-v3, cpu for a recipe")
    parser.add_argument("--hardware-file", type=Path, help="TOML of extra profiles, same shape as hardware.toml")
    parser.add_argument("--devices", type=int, default=1, help="devices the recipe runs on (default 1)")
    parser.add_argument("--sharded", action="store_true", help="shard parameters, gradients, optimizer (FSDP)")
    parser.add_argument("--mfu", type=float, help="training MFU (default: the hardware profile's)")
    parser.add_argument("--generation-mfu", type=float, help="rollout MFU (default: the hardware profile's)")
    parser.add_argument("--price-per-hour", type=float, help="override the profile's $ per device-hour")
    parser.add_argument("--measure-seconds", type=float, default=2.0, help="time spent measuring the CPU peak")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for name in ("mfu", "generation_mfu"):
        value = getattr(args, name)
        if value is not None and not 0 < value <= 1:
            raise UserError(f"--{name.replace('_', '-')} must be in (0, 1], got {value}")
    if args.price_per_hour is not None and args.price_per_hour < 0:
        raise UserError(f"--price-per-hour must be >= 0, got {args.price_per_hour}")
    if args.measure_seconds <= 0:
        raise UserError(f"--measure-seconds must be > 0, got {args.measure_seconds}")
    if args.recipe is not None:
        if args.view:
            raise UserError(f"give either a view ({args.view}) or --recipe, not both")
        return _recipe_view(args)
    if args.view == "deepseek-v3":
        return _deepseek_view(args)
    if args.view == "hardware":
        return _hardware_view(args)
    raise UserError("say what to price: `cost deepseek-v3`, `cost hardware` or `cost --recipe RECIPE.toml`")


def _hardware(args: argparse.Namespace, default: str) -> Hardware:
    hardware = get_hardware(args.hardware or default, args.hardware_file, measure_seconds=args.measure_seconds)
    changes = {k: v for k, v in (("mfu", args.mfu), ("generation_mfu", args.generation_mfu),
                                 ("usd_per_hour", args.price_per_hour)) if v is not None}
    if args.mfu is not None:
        changes["mfu_by_precision"] = {}
    return dataclasses.replace(hardware, **changes)


def _emit(data: dict[str, Any]) -> None:
    print(json.dumps(data, indent=2))


# --------------------------------------------------------------------------------------------------
def load_recipe(path: Path, hardware: Hardware) -> tuple[ModelConfig, list[Stage]]:
    """Read the schema in the module docstring (a run recipe's stages as they would run on `hardware`);
    mistakes are `UserError`s naming the file."""
    if not path.is_file():
        raise UserError(f"recipe not found: {path}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"{path}: not valid TOML: {error}") from None
    if "stage" not in data:
        return recipe_stages(path, data, hardware)
    unknown = sorted(set(data) - {"model", "stage"})
    if unknown:
        raise UserError(f"{path}: unknown table(s) {', '.join(unknown)}; expected [model] and [[stage]]")
    model = dict(data.get("model", {}))
    try:
        cfg = preset(model.pop("preset", "small"), **model)
    except (ValueError, TypeError) as error:
        raise UserError(f"{path}: [model]: {error}") from None
    stages = data.get("stage", [])
    if not isinstance(stages, list) or not stages:
        raise UserError(f"{path}: no [[stage]] tables")
    return cfg, [Stage.from_dict(stage) for stage in stages]


def _recipe_view(args: argparse.Namespace) -> int:
    hardware = _hardware(args, "cpu")
    cfg, stages = load_recipe(args.recipe, hardware)
    projection = project(stages, cfg, hardware, args.devices, sharded=args.sharded)
    if args.json:
        _emit({"recipe": str(args.recipe), **projection.to_dict()})
    else:
        render_projection(projection, Console())
    return 0


def render_projection(projection: Projection, console: Console) -> None:
    hw = projection.hardware
    peaks = ", ".join(f"{p} {f / 1e12:,.3g} TFLOP/s" for p, f in hw.peak_flops.items())
    console.print(f"[bold]{projection.devices} × {hw.name}[/] ({peaks}; {hw.memory_bytes / 1e9:,.1f} GB; "
                  f"{hw.power_w:g} W; ${hw.usd_per_hour:g}/h; training MFU {_mfu(hw)}, rollouts {hw.generation_mfu:g})")
    table = Table(title="Projection")
    for column in ("stage", "tokens", "FLOPs", "wall", "device-hours", "USD", "kWh", "memory/device", "fits"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for s in projection.stages:
        fits = "[green]yes[/]" if s.memory.fits and not s.warnings else ("[yellow]tight[/]" if s.memory.fits
                                                                          else "[red]NO[/]")
        table.add_row(f"{s.name} ({s.kind})", f"{s.tokens:,}", f"{s.flops:.3e}", _duration(s.seconds),
                      f"{s.gpu_hours:,.2f}", f"${s.usd:,.2f}", f"{s.kwh:,.2f}",
                      f"{s.memory.total / 1e9:,.2f} GB", fits)
    table.add_row("total", "", f"{projection.flops:.3e}", _duration(projection.seconds),
                  f"{projection.gpu_hours:,.2f}", f"${projection.usd:,.2f}", f"{projection.kwh:,.2f}", "", "",
                  style="bold")
    console.print(table)
    for warning in projection.warnings:
        console.print(f"[red]warning:[/] {warning}")


def _mfu(hw: Hardware) -> str:
    if not hw.mfu_by_precision:
        return f"{hw.mfu:g}"
    return ", ".join(f"{p} {m:g}" for p, m in hw.mfu_by_precision.items())


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:,.1f} d"


# --------------------------------------------------------------------------------------------------
def _hardware_view(args: argparse.Namespace) -> int:
    profiles = {**load_profiles(args.hardware_file)}
    profiles.setdefault("cpu", get_hardware("cpu", measure_seconds=args.measure_seconds))
    if args.price_per_hour is not None and "cpu" in profiles:
        profiles["cpu"] = profiles["cpu"].with_price(args.price_per_hour)
    if args.json:
        _emit({"hardware": [hw.to_dict() for hw in profiles.values()]})
        return 0
    table = Table(title="Hardware profiles (dense peaks)")
    for column in ("name", "fp32", "bf16", "fp8", "memory", "power", "$/hour", "source"):
        table.add_column(column, justify="left" if column in ("name", "source") else "right")
    for hw in profiles.values():
        peaks = [f"{hw.peak_flops[p] / 1e12:,.3g} T" if p in hw.peak_flops else "—" for p in ("fp32", "bf16", "fp8")]
        table.add_row(hw.name, *peaks, f"{hw.memory_bytes / 1e9:,.0f} GB", f"{hw.power_w:g} W",
                      f"{hw.usd_per_hour:g}", hw.source)
    Console().print(table)
    return 0


# --------------------------------------------------------------------------------------------------
def _deepseek_view(args: argparse.Namespace) -> int:
    hardware = _hardware(args, "H800")
    data = deepseek_v3.report(hardware, hardware.mfu)
    if args.json:
        _emit(data)
    else:
        render_deepseek(data, Console())
    return 0


def _k(hours: float) -> str:
    return f"{hours / 1000:,.0f}K"


def render_deepseek(data: dict[str, Any], console: Console) -> None:
    reported = Table(title=f"DeepSeek-V3 training cost as reported (H800, ${data['usd_per_gpu_hour']}/GPU-hour)")
    for column in ("stage", "GPU-hours", "USD", "kWh (700 W)"):
        reported.add_column(column, justify="left" if column == "stage" else "right")
    for s in data["stages"]:
        reported.add_row(s["name"], _k(s["gpu_hours"]), f"${s['usd'] / 1e6:.3f}M", f"{s['kwh']:,.0f}")
    reported.add_row("total", _k(data["gpu_hours"]), f"${data['usd'] / 1e6:.3f}M", f"{data['kwh']:,.0f}",
                     style="bold")
    console.print(reported)

    fp = data["first_principles"]
    p = fp["parameters"]
    console.print(f"\n[bold]671B preset, counted[/]: {p['total'] / 1e9:.2f}B parameters (main model), "
                  f"{p['active'] / 1e9:.2f}B active per token, {p['active_matmul'] / 1e9:.2f}B active in matmuls "
                  f"(no embedding, no norms); MTP adds {p['mtp'] / 1e9:.2f}B "
                  f"(= {p['total_with_mtp'] / 1e9:.2f}B; the checkpoint's copies of embedding and head make "
                  f"the 685B Hugging Face lists)")

    ft = fp["pretrain_flops_per_token"]
    per_token = Table(title=f"Training FLOPs per token at seq_len {ft['seq_len']} (forward + backward)")
    per_token.add_column("term")
    per_token.add_column("GFLOP/token", justify="right")
    per_token.add_row("6 × active matmul parameters (lm_head included)", f"{ft['matmul'] / 1e9:,.1f}")
    per_token.add_row("attention QKᵀ + AV, causal: 3·L·H·(dqk+dv)·(T+1)", f"{ft['attention'] / 1e9:,.1f}")
    per_token.add_row("MTP module: 6 × matmuls (eh_proj, block, shared head)", f"{ft['mtp_matmul'] / 1e9:,.1f}")
    per_token.add_row("MTP module: attention", f"{ft['mtp_attention'] / 1e9:,.1f}")
    per_token.add_row("total", f"{ft['total'] / 1e9:,.1f}", style="bold")
    console.print(per_token)
    check = fp["six_n_check"]
    ratio = check["six_active_tokens"] / check["six_37b_tokens"] - 1
    console.print(f"6 × {p['active'] / 1e9:.2f}B active × 14.8T = {check['six_active_tokens']:.4e} FLOPs; "
                  f"6 × 37B × 14.8T = {check['six_37b_tokens']:.4e} ({ratio:+.1%})")

    peaks = fp["peak_flops"]
    title = (f"From first principles on {fp['hardware']}: "
             + ", ".join(f"{k} {v / 1e12:,.1f} TFLOP/s" for k, v in peaks.items()) + f"; MFU {fp['mfu']:g}")
    derived = Table(title=title)
    derived.add_column("stage")
    for column in ("tokens", "FLOPs", "reported GPU-h", *(f"implied MFU {k}" for k in peaks),
                   *(f"GPU-h @ MFU {fp['mfu']:g} {k}" for k in peaks)):
        derived.add_column(column, justify="right")
    for s in fp["stages"]:
        derived.add_row(s["name"], f"{s['tokens'] / 1e12:,.3f}T", f"{s['flops']:.3e}", _k(s["reported_gpu_hours"]),
                        *(f"{s['implied_mfu'][k]:.1%}" for k in peaks), *(_k(s["gpu_hours"][k]) for k in peaks))
    derived.add_row("total", "", f"{fp['flops']:.3e}", "", *("" for _ in peaks),
                    *(_k(fp["gpu_hours"][k]) for k in peaks), style="bold")
    console.print(derived)
    console.print("At that MFU: " + "; ".join(
        f"{k}: {_k(fp['gpu_hours'][k])} GPU-hours, ${fp['usd'][k] / 1e6:.3f}M, {fp['kwh'][k]:,.0f} kWh" for k in peaks))
    console.print(f"[dim]{fp['note']}. Implied MFU = FLOPs / (reported GPU-hours × 3600 × peak); DeepSeek ran "
                  f"GEMMs in fp8 and attention in bf16, so the true figure lies between the two columns.[/]")
