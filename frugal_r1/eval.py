"""Evaluation: pass@1 and cons@K with intervals, on reasoning-gym tasks and JSONL sets — the one
implementation that `frugal-r1 eval`, GRPO's periodic held-out eval and the speedrun report all call.

    from frugal_r1.eval import evaluate
    report = evaluate(load_backend("runs/grpo/final"), ["chain_sum", "jsonl:gsm8k.jsonl"], n=100, samples=4)
    report.tasks[0].pass_at_1, report.tasks[0].ci95, report.tasks[0].cons_at_k, report.to_dict()

Per task, `n` held-out problems × `samples` completions (R1's evaluation defaults: temperature 0.6,
top-p 0.95), each checked by the task's verifier (`frugal_r1.rewards.verify`: the answer is read from the
last `<answer>…</answer>` anywhere in the completion, or `\\boxed{}` for math):

- pass@1 = mean over problems of the mean score of that problem's samples (R1's pass@1 with k samples).
- ci95: a Wilson score interval for pass@1 at an effective sample size (Kish's design effect). The k
  samples of one problem are correlated, so the per-problem means x_i are the independent units:
  n_eff = n·p(1−p)/s², s² their sample variance, clamped to [n, n·k]. n is the floor because
  x_i ∈ [0, 1] gives Var(x_i) ≤ p(1−p) (so Wilson over n problems is always conservative); n·k is the
  ceiling, reached when every problem is equally hard and samples are independent draws. With k = 1 it is
  the plain Wilson interval; unlike a t/normal interval on the x_i it never collapses to a point at
  0 % or 100 %.
- cons@K: per problem, a majority vote over the normalised answers of the samples whose answer could be
  parsed (`normalise_answer`: whitespace collapsed, `$…$` and `\\boxed{}` removed, numbers in canonical
  form so "1,000", "1000.0" and "1000" vote together). Ties go to the answer seen first (sample order,
  so deterministic). The winner is scored by the verifier's verdict on the first sample that gave it;
  a problem with no parsable sample scores 0.
- unparsable (Verdict.parsed False: no answer tag, not a number, not an expression) is counted apart
  from wrong (parsed, score < 1) and correct (score = 1); truncated counts completions that hit
  max_new_tokens or the context.

Prompts: "chat" renders the problem as one user turn with the model's chat template (ours: R1's format,
whose generation prompt opens `<think>\\n`; an HF model dir's own template when it has a different one);
"r1_zero" uses R1-Zero's plain template and stops at `</answer>` (a base model rarely stops by itself).
Held-out rows: `load_task(name, size=n, seed=task_seed)`, with task_seed by default `EVAL_SEED` =
`DataConfig.eval_seed_offset` (1,000,003): the trainer's own held-out seed for a run with train.seed 0,
far from the small seeds training runs use. Generation goes through any `Backend`, `batch_size`
problems (× samples rows) per call; each call's seed is derived from (seed, task, first problem), so a
report depends on the seed and not on the batch size's effect on prompt indices.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from frugal_r1.chat import ANSWER_END, CHAT_TEMPLATE, THINK_START, r1_zero_prompt, render_chat
from frugal_r1.errors import UserError
from frugal_r1.generate.backend import Backend, SamplingParams
from frugal_r1.recipe import DataConfig
from frugal_r1.rewards.extract import answer_tag, last_boxed, math_answer
from frugal_r1.rewards.verifiers import parse_number, verify
from frugal_r1.tasks import Task, load_task

EVAL_SEED = DataConfig().eval_seed_offset
Z95 = 1.959963984540054
PromptFormat = Literal["chat", "r1_zero"]


# --- prompts ------------------------------------------------------------------------------------------
def uses_own_template(tokenizer: Any) -> bool:
    """True when the tokenizer carries a chat template other than frugal-r1's R1 format."""
    template = getattr(tokenizer, "chat_template", None)
    return isinstance(template, str) and bool(template) and template != CHAT_TEMPLATE


def chat_prompt(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> str:
    """The generation prompt for `messages`: `render_chat` (R1's format), or the tokenizer's own chat
    template when it has a different one (an HF model directory)."""
    if uses_own_template(tokenizer):
        try:
            return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        except Exception as error:  # jinja raises its own exception types for bad roles and the like
            raise UserError(f"the model's chat template rejected the messages: {error}") from None
    return render_chat(messages, add_generation_prompt=True)


def opens_thinking(prompt: str) -> bool:
    """Whether the prompt already opened a `<think>` block (ours always does), so generated text starts
    as reasoning."""
    return prompt.rstrip().endswith(THINK_START)


def task_prompt(tokenizer: Any, prompt: str | list[dict[str, str]], prompt_format: PromptFormat) -> str:
    """A task row's prompt (a question, or a list of messages) in the given format."""
    if prompt_format == "chat":
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        return chat_prompt(tokenizer, messages)
    if prompt_format == "r1_zero":
        if isinstance(prompt, list):
            prompt = next((m["content"] for m in reversed(prompt) if m.get("role") == "user"), "")
        return r1_zero_prompt(prompt)
    raise UserError(f"prompt_format must be 'chat' or 'r1_zero', got {prompt_format!r}")


# --- statistics ---------------------------------------------------------------------------------------
def wilson_interval(p: float, n_eff: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion p observed over n_eff (possibly fractional) trials."""
    if n_eff <= 0:
        return 0.0, 1.0
    z2 = z * z
    denominator = 1 + z2 / n_eff
    centre = (p + z2 / (2 * n_eff)) / denominator
    half = z * math.sqrt(max(p * (1 - p), 0.0) / n_eff + z2 / (4 * n_eff * n_eff)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def effective_size(means: Sequence[float], samples: int) -> float:
    """Kish's effective number of independent samples behind mean(means), clamped to [n, n·samples]."""
    n = len(means)
    if n == 0:
        return 0.0
    p = sum(means) / n
    if n == 1:
        return float(samples)
    variance = sum((x - p) ** 2 for x in means) / (n - 1)
    if variance == 0:
        return float(n * samples)
    return min(float(n * samples), max(float(n), n * p * (1 - p) / variance))


def pass_at_1_interval(means: Sequence[float], samples: int) -> tuple[float, float]:
    """The 95 % interval for pass@1 from per-problem mean scores (see the module docstring)."""
    if not means:
        return 0.0, 1.0
    return wilson_interval(sum(means) / len(means), effective_size(means, samples))


def normalise_answer(completion: str, row: Mapping[str, Any]) -> str | None:
    """The answer of a completion in a form where equal answers compare equal, or None when it has none."""
    verifier = row.get("metadata", {}).get("verifier")
    answer = math_answer(completion) if verifier == "math" else answer_tag(completion)
    if answer is None:
        return None
    text = " ".join(answer.split())
    if len(text) >= 2 and text[0] == text[-1] == "$":
        text = text.strip("$").strip()
    boxed = last_boxed(text) if text.startswith("\\boxed") else None
    if boxed is not None:
        text = boxed
    number = parse_number(text)
    return str(number) if number is not None else text


def majority(answers: Sequence[str | None]) -> int | None:
    """Index of the first sample whose answer won the vote (ties: the answer seen first), or None when
    no sample has an answer."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(i for i, a in enumerate(answers) if a is not None and counts[a] == best)


# --- the report ---------------------------------------------------------------------------------------
@dataclass
class ProblemResult:
    index: int  # row index in the task
    reference: str
    scores: list[float]
    parsed: list[bool]
    answers: list[str | None]  # normalised
    voted: str | None
    cons_score: float
    lengths: list[int] = field(default_factory=list)  # completion tokens of each sample

    @property
    def mean(self) -> float:
        return sum(self.scores) / len(self.scores)


@dataclass
class TaskResult:
    task: str
    n: int  # problems
    samples: int  # completions per problem (K)
    pass_at_1: float
    ci95: tuple[float, float]
    cons_at_k: float
    correct: int  # completions with score 1
    wrong: int  # parsed, score < 1
    unparsable: int  # no answer could be read
    truncated: int  # stopped by the token budget or the context, not by the model
    mean_completion_tokens: float
    completion_tokens: int
    seconds: float
    examples: list[dict[str, Any]] = field(default_factory=list)
    problems: list[ProblemResult] = field(default_factory=list)

    @property
    def completions(self) -> int:
        return self.n * self.samples

    def to_dict(self, problems: bool = True) -> dict[str, Any]:
        out = asdict(self)
        out["ci95"] = list(self.ci95)
        out["completions"] = self.completions
        if not problems:
            del out["problems"]
        return out


@dataclass
class EvalReport:
    tasks: list[TaskResult]
    config: dict[str, Any]

    @property
    def pass_at_1(self) -> float:
        """Macro mean over tasks."""
        return sum(t.pass_at_1 for t in self.tasks) / len(self.tasks) if self.tasks else 0.0

    @property
    def cons_at_k(self) -> float:
        return sum(t.cons_at_k for t in self.tasks) / len(self.tasks) if self.tasks else 0.0

    def task(self, name: str) -> TaskResult:
        return next(t for t in self.tasks if t.task == name)

    def metrics(self, prefix: str = "eval/") -> dict[str, float]:
        """Flat scalars for metrics.jsonl / TensorBoard: per task and macro pass@1, cons@K, unparsable."""
        out: dict[str, float] = {}
        for t in self.tasks:
            out[f"{prefix}{t.task}/pass@1"] = t.pass_at_1
            out[f"{prefix}{t.task}/cons@{t.samples}"] = t.cons_at_k
            out[f"{prefix}{t.task}/unparsable"] = t.unparsable / max(1, t.completions)
            out[f"{prefix}{t.task}/completion_tokens"] = t.mean_completion_tokens
        out[f"{prefix}pass@1"] = self.pass_at_1
        out[f"{prefix}cons@k"] = self.cons_at_k
        return out

    def to_dict(self, problems: bool = True) -> dict[str, Any]:
        return {"config": dict(self.config), "pass_at_1": self.pass_at_1, "cons_at_k": self.cons_at_k,
                "tasks": [t.to_dict(problems) for t in self.tasks]}

    def print(self, console: Any = None) -> None:
        """A rich table: one row per task, then the macro mean."""
        from rich.table import Table

        console = console or console_for_stdout()
        k = self.config.get("samples", "K")
        table = Table(title=f"eval: {self.config.get('model', '')}  (T={self.config.get('temperature')}, "
                            f"top-p={self.config.get('top_p')}, K={k})")
        for name, justify in (("task", "left"), ("n", "right"), ("pass@1", "right"), ("95% CI", "right"),
                              (f"cons@{k}", "right"), ("correct", "right"), ("wrong", "right"),
                              ("unparsable", "right"), ("truncated", "right"), ("tokens", "right")):
            table.add_column(name, justify=justify)
        for t in self.tasks:
            table.add_row(t.task, str(t.n), f"{100 * t.pass_at_1:.1f}%",
                          f"{100 * t.ci95[0]:.1f}–{100 * t.ci95[1]:.1f}", f"{100 * t.cons_at_k:.1f}%",
                          str(t.correct), str(t.wrong), str(t.unparsable), str(t.truncated),
                          f"{t.mean_completion_tokens:.0f}")
        if len(self.tasks) > 1:
            table.add_section()
            table.add_row("macro mean", "", f"{100 * self.pass_at_1:.1f}%", "", f"{100 * self.cons_at_k:.1f}%")
        console.print(table)


def console_for_stdout():
    """A console that does not squeeze the table to 80 columns when stdout is a file or a pipe."""
    import sys

    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=160)


# --- evaluation ---------------------------------------------------------------------------------------
def _call_seed(seed: int, task: str, start: int) -> int:
    digest = hashlib.sha256(f"{seed}:{task}:{start}".encode()).digest()
    return int.from_bytes(digest[:7], "big")


def _open(tasks: Sequence[Task | str], n: int, task_seed: int,
          task_config: Mapping[str, Mapping[str, Any]] | None) -> list[Task]:
    if isinstance(tasks, (str, Task)):
        tasks = [tasks]
    if not tasks:
        raise UserError("name at least one task to evaluate")
    config = dict(task_config or {})
    names = [t if isinstance(t, str) else t.name for t in tasks]
    stray = sorted(set(config) - set(names))
    if stray:
        raise UserError(f"task config given for tasks not evaluated: {', '.join(stray)}")
    return [load_task(t, size=n, seed=task_seed, **config.get(t, {})) if isinstance(t, str) else t for t in tasks]


def evaluate(backend: Backend, tasks: Sequence[Task | str], *, n: int, samples: int = 4,
             temperature: float = 0.6, top_p: float = 0.95, max_new_tokens: int = 1024, seed: int = 0,
             prompt_format: PromptFormat = "chat", task_seed: int = EVAL_SEED,
             task_config: Mapping[str, Mapping[str, Any]] | None = None, batch_size: int = 16,
             num_examples: int = 3, progress: bool = True, model_name: str = "",
             task_max_new_tokens: Mapping[str, int] | None = None) -> EvalReport:
    """Evaluate `backend` on the first `n` rows of each task (Task objects, or names loaded with
    `load_task(name, size=n, seed=task_seed, **task_config[name])`), `samples` completions per problem.
    `seed` seeds the sampling; `task_max_new_tokens` gives some tasks their own token budget instead of
    `max_new_tokens`. See the module docstring for every figure in the report."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UserError(f"n (problems per task) must be a positive integer, got {n!r}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise UserError(f"samples must be a positive integer, got {samples!r}")
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    if backend.tokenizer is None:
        raise UserError("evaluation needs text: the model directory has no tokenizer")
    opened = _open(tasks, n, task_seed, task_config)
    budgets = _budgets(opened, max_new_tokens, task_max_new_tokens)
    stops = (ANSWER_END,) if prompt_format == "r1_zero" else ()
    base = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, n=samples,
                          stop_strings=stops)
    config = {"model": model_name, "n": n, "samples": samples, "temperature": temperature, "top_p": top_p,
              "max_new_tokens": max_new_tokens, "seed": seed, "task_seed": task_seed,
              "prompt_format": prompt_format, "task_config": {k: dict(v) for k, v in (task_config or {}).items()},
              "task_max_new_tokens": dict(task_max_new_tokens or {})}
    total = sum(min(n, len(t)) for t in opened)
    with _progress(progress, total) as advance:
        results = [_evaluate_task(backend, task, min(n, len(task)), replace(base, max_new_tokens=budget), seed,
                                  prompt_format, batch_size, num_examples, advance)
                   for task, budget in zip(opened, budgets)]
    return EvalReport(results, config)


def _budgets(tasks: Sequence[Task], default: int, per_task: Mapping[str, int] | None) -> list[int]:
    per_task = dict(per_task or {})
    stray = sorted(set(per_task) - {t.name for t in tasks})
    if stray:
        raise UserError(f"a token budget given for tasks not evaluated: {', '.join(stray)}")
    for name, budget in per_task.items():
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise UserError(f"the token budget of {name} must be a positive integer, got {budget!r}")
    return [per_task.get(t.name, default) for t in tasks]


def _evaluate_task(backend: Backend, task: Task, n: int, base: SamplingParams, seed: int,
                   prompt_format: PromptFormat, batch_size: int, num_examples: int, advance) -> TaskResult:
    start_time = time.perf_counter()
    problems: list[ProblemResult] = []
    examples: list[dict[str, Any]] = []
    tokens = truncated = 0
    for start in range(0, n, batch_size):
        rows = [task[i] for i in range(start, min(n, start + batch_size))]
        prompts = [task_prompt(backend.tokenizer, row["prompt"], prompt_format) for row in rows]
        params = replace(base, seed=_call_seed(seed, task.name, start))
        completions = backend.generate(prompts, params)
        for offset, row in enumerate(rows):
            group = completions[offset * base.n:(offset + 1) * base.n]
            texts = [c.text + (ANSWER_END if c.stop == ANSWER_END else "") for c in group]
            verdicts = [verify(text, row) for text in texts]
            answers = [normalise_answer(text, row) if v.parsed else None for text, v in zip(texts, verdicts)]
            winner = majority(answers)
            lengths = [len(c.token_ids) for c in group]
            problems.append(ProblemResult(
                index=start + offset, reference=str(row["answer"]), scores=[v.score for v in verdicts],
                parsed=[v.parsed for v in verdicts], answers=answers,
                voted=None if winner is None else answers[winner],
                cons_score=0.0 if winner is None else verdicts[winner].score,
                lengths=lengths))
            tokens += sum(lengths)
            truncated += sum(c.finish_reason == "length" for c in group)
            if len(examples) < num_examples:
                examples.append({"index": start + offset, "prompt": prompts[offset], "reference": str(row["answer"]),
                                 "completion": texts[0], "score": verdicts[0].score, "parsed": verdicts[0].parsed,
                                 "reason": verdicts[0].reason})
        advance(len(rows))
    means = [p.mean for p in problems]
    flat = [(s, ok) for p in problems for s, ok in zip(p.scores, p.parsed)]
    return TaskResult(
        task=task.name, n=n, samples=base.n, pass_at_1=sum(means) / n, ci95=pass_at_1_interval(means, base.n),
        cons_at_k=sum(p.cons_score for p in problems) / n,
        correct=sum(s >= 1.0 for s, _ in flat), wrong=sum(ok and s < 1.0 for s, ok in flat),
        unparsable=sum(not ok for _, ok in flat), truncated=truncated,
        mean_completion_tokens=tokens / len(flat), completion_tokens=tokens,
        seconds=time.perf_counter() - start_time, examples=examples, problems=problems)


class _progress:
    """A rich progress bar over problems (on stderr), or nothing."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total, self.bar = enabled, total, None

    def __enter__(self):
        if not self.enabled:
            return lambda count: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self.bar = Progress("eval", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            console=Console(stderr=True), transient=True)
        self.bar.start()
        job = self.bar.add_task("eval", total=self.total)
        return lambda count: self.bar.advance(job, count)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


__all__ = ["evaluate", "EvalReport", "TaskResult", "ProblemResult", "EVAL_SEED", "chat_prompt", "task_prompt",
           "opens_thinking", "uses_own_template", "normalise_answer", "majority", "pass_at_1_interval",
           "wilson_interval", "effective_size"]
