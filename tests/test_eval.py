"""Evaluation: pass@1, cons@K, intervals and unparsable counts on hand-computed completions from a fake
backend; the JSONL GSM8K path through math-verify; R1-Zero stops; the CLI on a tiny model."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch

from frugal_r1.cli import main
from frugal_r1.errors import UserError
from frugal_r1.eval import (EVAL_SEED, effective_size, evaluate, majority, normalise_answer, pass_at_1_interval,
                            wilson_interval)
from frugal_r1.generate.backend import Backend, Completion, SamplingParams
from frugal_r1.tasks import load_task
from tiny_model import one_thread, tiny_model_dir


class _Tokenizer:
    chat_template = None
    eos_token_id = None


class FakeBackend(Backend):
    """Answers prompt i (in the order of the rows), sample j with script(prompt, j) -> (text, stop)."""

    def __init__(self, script: Callable[[str, int], str | tuple[str, str | None]]):
        self.script = script
        self.tokenizer = _Tokenizer()
        self.calls: list[SamplingParams] = []

    context_length = 4096
    vocab_size = 100
    config_eos_token_id = None

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[Completion]:
        self.calls.append(params)
        out = []
        for i, prompt in enumerate(prompts):
            for j in range(params.n):
                result = self.script(prompt, j)
                text, stop = result if isinstance(result, tuple) else (result, None)
                out.append(Completion([1], [5] * (j + 1), [0.0] * (j + 1), "stop" if stop else "length", text,
                                      stop=stop, prompt_index=i, sample_index=j))
        return out


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f"jsonl:{path}"


def answers(*values: str) -> list[str]:
    return [v if v.startswith("no answer") else f"<think>\nhmm\n</think>\n<answer>{v}</answer>" for v in values]


SCRIPTS = {"A": answers("4", "5", "4", "no answer at all"),  # 0.5, vote 4 -> 1, one unparsable
           "B": answers("9", "9", "10", "ten"),  # 0.25, vote 9 -> 0, "ten" is not a number
           "C": answers("7", "7", "7.0", "8")}  # 0.75, 7.0 votes with 7 -> 1


@pytest.fixture
def abc_task(tmp_path) -> str:
    rows = [{"prompt": "A", "answer": "4"}, {"prompt": "B", "answer": "10"}, {"prompt": "C", "answer": "7"}]
    return write_jsonl(tmp_path / "abc.jsonl", rows)


def by_question(prompt: str, j: int) -> str:
    question = prompt.split("<|User|>")[-1].split("<|Assistant|>")[0]
    return SCRIPTS[question][j]


def test_pass_at_1_cons_and_counts_by_hand(abc_task):
    task = load_task(abc_task, verifier="numeric")
    report = evaluate(FakeBackend(by_question), [task], n=3, samples=4, progress=False)
    result = report.tasks[0]
    assert result.pass_at_1 == pytest.approx((0.5 + 0.25 + 0.75) / 3)
    assert result.cons_at_k == pytest.approx(2 / 3)
    assert (result.correct, result.wrong, result.unparsable) == (6, 4, 2)
    assert [p.voted for p in result.problems] == ["4", "9", "7"]
    assert result.truncated == 12 and result.mean_completion_tokens == pytest.approx(2.5)
    # means 0.5, 0.25, 0.75: s^2 = 0.0625, n_eff = 3 * 0.25 / 0.0625 = 12 = n * k
    assert result.ci95 == pytest.approx(wilson_interval(0.5, 12))
    assert report.pass_at_1 == result.pass_at_1 and report.cons_at_k == result.cons_at_k
    json.dumps(report.to_dict())  # JSON-safe
    assert report.metrics()["eval/pass@1"] == result.pass_at_1


def test_sampling_defaults_and_call_seeds(abc_task):
    backend = FakeBackend(by_question)
    evaluate(backend, [load_task(abc_task, verifier="numeric")], n=3, samples=4, batch_size=2, progress=False)
    assert [(p.temperature, p.top_p, p.n) for p in backend.calls] == [(0.6, 0.95, 4)] * 2
    assert backend.calls[0].seed != backend.calls[1].seed  # problems in different calls draw differently


def test_a_task_can_have_its_own_token_budget(abc_task, tmp_path):
    other = write_jsonl(tmp_path / "other.jsonl", [{"prompt": "A", "answer": "4"}])
    backend = FakeBackend(by_question)
    tasks = [load_task(abc_task, verifier="numeric"), load_task(other, verifier="numeric")]
    report = evaluate(backend, tasks, n=3, samples=4, max_new_tokens=100, progress=False,
                      task_max_new_tokens={other: 7})
    assert [p.max_new_tokens for p in backend.calls] == [100, 7]
    assert report.config["task_max_new_tokens"] == {other: 7}
    assert report.tasks[0].problems[0].lengths == [1, 2, 3, 4]  # the fake backend's j + 1 tokens
    with pytest.raises(UserError, match="not evaluated: countdown"):
        evaluate(backend, tasks, n=3, task_max_new_tokens={"countdown": 7}, progress=False)
    with pytest.raises(UserError, match="positive integer"):
        evaluate(backend, tasks, n=3, task_max_new_tokens={other: 0}, progress=False)


def test_wilson_matches_the_formula_and_never_collapses():
    p, n, z = 0.3, 50, 1.959963984540054
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert wilson_interval(p, n) == pytest.approx((centre - half, centre + half))
    low, high = pass_at_1_interval([0.0] * 10, 4)
    assert low == 0 and 0 < high < 0.1  # all wrong: n_eff = 40, not a point at zero
    assert pass_at_1_interval([1.0] * 10, 4)[0] > 0.9
    # k = 1: the plain Wilson interval over problems
    means = [1.0] * 7 + [0.0] * 3
    assert pass_at_1_interval(means, 1) == pytest.approx(wilson_interval(0.7, 10))
    # perfectly split problems (each all-right or all-wrong): the k samples add nothing, n_eff = n
    assert effective_size([1.0, 0.0] * 10, 8) == 20


def test_majority_ties_go_to_the_first_answer_seen():
    assert majority(["5", "4", None]) == 0
    assert majority([None, "4", "5", "5"]) == 2
    assert majority([None, None]) is None


def test_normalisation_merges_equal_numbers():
    row = {"metadata": {"verifier": "math"}}
    forms = ["<answer>1,000</answer>", "<answer>1000.0</answer>", "<answer> $1000$ </answer>", "\\boxed{1000}"]
    assert {normalise_answer(f, row) for f in forms} == {"1000"}
    assert normalise_answer("no tags", {"metadata": {"verifier": "exact"}}) is None


def test_gsm8k_jsonl_with_math_verify(tmp_path):
    rows = [{"question": "Natalia sold 48 clips in April and half as many in May. How many in all?",
             "answer": "In May she sold 48/2 = 24.\n#### 72"},
            {"question": "What is one half of 3?", "answer": "#### \\frac{3}{2}"}]
    name = write_jsonl(tmp_path / "gsm8k.jsonl", rows)
    replies = {"Natalia": ["<think>\n48+24\n</think>\n<answer>\\frac{144}{2}</answer>", "\\boxed{72}",
                           "<answer>71</answer>", "<answer>seventy-two</answer>"],
               "half": ["<answer>1.5</answer>", "<answer>3/2</answer>", "<answer>\\frac{3}{2}</answer>", "1.5"]}

    def script(prompt: str, j: int) -> str:
        return replies["Natalia" if "Natalia" in prompt else "half"][j]

    result = evaluate(FakeBackend(script), [name], n=2, samples=4, progress=False).tasks[0]
    scores = [p.scores for p in result.problems]
    assert scores[0][:3] == [1.0, 1.0, 0.0] and scores[1][:3] == [1.0, 1.0, 1.0]
    assert scores[1][3] == 0.0 and not result.problems[1].parsed[3]  # no <answer> and no \boxed
    assert result.unparsable >= 1 and result.cons_at_k == 1.0


def test_r1_zero_prompt_and_stop_at_answer_end(abc_task):
    seen = []

    def script(prompt: str, j: int):
        seen.append(prompt)
        return "<think> x </think> <answer>4", "</answer>"  # the backend cut the stop string off

    report = evaluate(FakeBackend(script), [load_task(abc_task, verifier="numeric")], n=1, samples=1,
                      prompt_format="r1_zero", progress=False)
    assert seen[0].startswith("A conversation between User and Assistant") and seen[0].endswith("Assistant:")
    assert report.tasks[0].pass_at_1 == 1.0


def test_reasoning_gym_task_by_name_uses_the_held_out_seed_and_config():
    config = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}
    reference = load_task("chain_sum", size=5, seed=EVAL_SEED, **config)
    solutions = {row["prompt"]: row["answer"] for row in reference}

    def script(prompt: str, j: int) -> str:
        question = prompt.split("<|User|>")[-1].split("<|Assistant|>")[0]
        return f"<answer>{solutions[question]}</answer>"

    report = evaluate(FakeBackend(script), ["chain_sum"], n=5, samples=2, task_config={"chain_sum": config},
                      progress=False)
    assert report.tasks[0].pass_at_1 == 1.0 and report.tasks[0].n == 5


def test_bad_arguments_are_user_errors(abc_task):
    with pytest.raises(UserError):
        evaluate(FakeBackend(by_question), [abc_task], n=0, progress=False)
    with pytest.raises(UserError):
        evaluate(FakeBackend(by_question), [abc_task], n=1, task_config={"countdown": {}}, progress=False)


# --- the CLI on a real (tiny) model ------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    with one_thread():
        yield tiny_model_dir()


def test_cli_on_a_tiny_model(tiny_dir, tmp_path, capsys):
    name = write_jsonl(tmp_path / "sums.jsonl", [{"question": "What is 2+2?", "answer": "4"},
                                                 {"question": "Add 2 and 2.", "answer": "#### 4"},
                                                 {"question": "What is 3+3?", "answer": "6"}])
    out = tmp_path / "report.json"
    threads = torch.get_num_threads()
    try:
        code = main(["eval", "--model", str(tiny_dir), "--task", name, "--n", "3", "--samples", "2",
                     "--max-new-tokens", "24", "--json", str(out), "--no-progress", "--threads", "1"])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    report = json.loads(out.read_text())
    task = report["tasks"][0]
    assert task["n"] == 3 and task["samples"] == 2 and task["completions"] == 6
    assert task["pass_at_1"] >= 0.5  # the tiny model was fitted to answer 4
    assert task["correct"] + task["wrong"] + task["unparsable"] == 6
    assert "pass@1" in capsys.readouterr().out


def test_cli_errors_are_one_line(tiny_dir, capsys):
    assert main(["eval", "--model", str(tiny_dir), "--task", "no_such_task", "--n", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown task" in err and len(err.splitlines()) == 1
    assert main(["eval", "--model", str(tiny_dir), "--task", "chain_sum", "--task-config", "oops=1"]) == 2
    capsys.readouterr()
    assert main(["eval", "--model", str(tiny_dir), "--task", "chain_sum", "--task-max-new-tokens", "chain_sum"]) == 2
    assert "use NAME=N" in capsys.readouterr().err
