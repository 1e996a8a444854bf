"""The planner's projection of a run against the ledger the run wrote (F8)."""

from __future__ import annotations

import json

import pytest

from frugal_r1.cost.planner import Stage, project
from frugal_r1.ledger import resolve_hardware
from frugal_r1.model.config import ModelConfig
from frugal_r1.precision import planned_precision
from frugal_r1.recipe import load_stage
from frugal_r1.train.run import run_lm_stage


def run_and_project(tmp_path, overrides):
    cfg = load_stage("pretrain", None, ["data.tasks=['chain_sum']", "data.tokenizer_documents=200",
                                        "data.vocab_size=400", "train.eval_batches=1", "ledger.hardware='cpu'",
                                        *overrides])
    run_lm_stage("pretrain", cfg, tmp_path / "run")
    ledger = json.loads((tmp_path / "run" / "ledger.json").read_text())
    model_cfg = ModelConfig.from_hf_dict(json.loads((tmp_path / "run" / "final" / "config.json").read_text()))
    hardware = resolve_hardware("cpu")
    stage = Stage(kind="pretrain", steps=cfg.train.steps, batch_size=cfg.data.batch_size, seq_len=cfg.data.seq_len,
                  precision=planned_precision(cfg.train.bf16, hardware.peak_flops))
    return ledger, project([stage], model_cfg, hardware).stages[0]


def test_projected_flops_equal_the_ledgers(tmp_path):
    ledger, projected = run_and_project(tmp_path, ["model.preset='tiny'", "data.seq_len=64", "data.batch_size=4",
                                                   "train.steps=3"])
    assert ledger["tokens"] == projected.tokens == 3 * 4 * 64
    assert ledger["flops"] == pytest.approx(projected.flops, rel=1e-9)


@pytest.mark.slow
def test_projected_time_within_30_percent_of_the_ledger(tmp_path):
    """A timing comparison, so it is kept out of the default run: on a quiet machine of this kind."""
    ledger, projected = run_and_project(tmp_path, ["model.preset='small'", "data.seq_len=512", "data.batch_size=16",
                                                   "train.steps=30"])
    assert projected.seconds == pytest.approx(ledger["wall_seconds"], rel=0.30)
