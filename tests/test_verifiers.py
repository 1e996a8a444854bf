"""Verifiers: correct answers score 1, hostile completions score 0 quickly, nothing is ever run."""

from __future__ import annotations

import threading
import time

import pytest

from frugal_r1.rewards import Verdict, answer_tag, last_boxed, math_answer, verify, warm_up
from frugal_r1.rewards.expression import Unparsable, evaluate, uses_numbers
from frugal_r1.rewards.verifiers import check_expression, check_numeric, gym_scorer_problem, parse_number
from frugal_r1.tasks import load_task

SPEEDRUN_COUNTDOWN = dict(min_numbers=3, max_numbers=4, min_value=1, max_value=50, min_target=10, max_target=100)


def r1(answer: str) -> str:
    return f"<think>Let me work it out.</think>\n<answer>{answer}</answer>"


def row(verifier: str, answer: str, **metadata) -> dict:
    return {"prompt": "p", "answer": answer, "metadata": {"task": "test", "verifier": verifier, **metadata}}


COUNTDOWN = row("expression", "45 - 29 + 18", numbers=[18, 45, 29], target=34, number_rule="all", operators="+-*/")
PUZZLE24 = row("expression", "10*(8 - 5) - 6", numbers=[8, 5, 10, 6], target=24, number_rule="all", operators="+-*/")
NUMERIC = row("numeric", "24")
MATH = row("math", "\\frac{1}{2}")
EXACT = row("exact", "24")


@pytest.fixture(scope="module", autouse=True)
def workers():
    warm_up()  # start the worker process once, outside the timed checks


@pytest.fixture(scope="module")
def gym_row():
    task = load_task("letter_counting", size=4, seed=0)
    return task[0]


def timed(completion: str, task_row: dict) -> tuple[Verdict, float]:
    start = time.monotonic()
    verdict = verify(completion, task_row)
    return verdict, time.monotonic() - start


# --- extraction -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("<think>t</think>\n<answer> 42 </answer>", "42"),
        ("<answer>a</answer> then <answer>b</answer>", "b"),
        ("<answer>a</answer><answer>b", "a"),  # the last pair is unclosed: the last complete one wins
        ("<answer><answer>x</answer>", "x"),
        ("<answer>a</answer>b</answer>", "a"),
        ("<answer>x<answer>y</answer>z</answer>", "y"),
        ("<answer>24", None),
        ("24</answer>", None),
        ("</answer>24<answer>", None),
        ("no tags at all: 24", None),
        ("<answer></answer>", ""),
        ("<ANSWER>24</ANSWER>", None),
    ],
)
def test_answer_tag(completion, expected):
    assert answer_tag(completion) == expected


def test_extraction_is_linear_on_huge_inputs():
    cases = [
        "<answer>" * 200_000 + "</answer>" * 50_000,
        "x" * 10**6 + "<answer>1</answer>",
        "<answer>" + "(" * 10**6,
        "\\boxed{" * 200_000,
        "\\boxed{" + "{" * 10**6,
        "<answer>" + "\\boxed{" * 100_000 + "</answer>",
    ]
    for text in cases:
        start = time.monotonic()
        answer_tag(text), last_boxed(text), math_answer(text)
        assert time.monotonic() - start < 1.0


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
        ("\\boxed{1} and \\boxed{2}", "2"),
        ("\\boxed{a\\}b}", "a\\}b"),
        ("\\boxed{\\boxed{3}}", "3"),  # the innermost, which starts last
        ("\\boxed{3} then \\boxed{", "3"),
        ("\\boxed 5", None),
        ("nothing", None),
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


def test_math_answer_prefers_boxed_inside_the_answer_then_the_tag_then_any_boxed():
    assert math_answer("<answer>so \\boxed{7}</answer>") == "7"
    assert math_answer("\\boxed{1} <answer>7</answer>") == "7"
    assert math_answer("<think>x</think> the answer is \\boxed{7}") == "7"
    assert math_answer("no answer") is None


# --- numeric --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, value",
    [
        ("42", 42),
        (" -4\n", -4),
        ("+1,234", 1234),
        ("1,234,567", 1234567),
        ("3.50", 3.5),
        ("7/2", 3.5),
        ("-0", 0),
        ("1,2345", None),
        ("1e3", None),
        ("1e999999999", None),
        ("42.", None),
        ("1/0", None),
        ("４２", None),
        ("٤٢", None),
        ("4 2", None),
        ("0x10", None),
        ("1" * 101, None),
        ("", None),
    ],
)
def test_parse_number(text, value):
    assert parse_number(text) == value if value is not None else parse_number(text) is None


def test_numeric_is_exact_and_separates_unparsable_from_wrong():
    assert verify(r1("24"), NUMERIC) == Verdict(1.0, True)
    assert verify(r1("24.0"), NUMERIC).score == 1.0
    assert verify(r1("23.999999999999999999"), NUMERIC) == Verdict(0.0, True, "wrong number")
    assert verify(r1("twenty-four"), NUMERIC).parsed is False
    assert verify("24", NUMERIC).parsed is False  # the bare number is not in the R1 format
    assert check_numeric("10", "10") == Verdict(1.0, True)


# --- expression -----------------------------------------------------------------------------------


def test_evaluate_is_exact():
    assert evaluate("8 / (3 - 8 / 3)").value == 24
    assert evaluate("1/3*3").value == 1
    assert evaluate("8 × 3").value == 24 and evaluate("8 \\times 3").value == 24 and evaluate("−1+25").value == 24
    assert evaluate("-(2 - 26)").literals == (2, 26)
    assert evaluate("6/(2-2)").value is None


@pytest.mark.parametrize(
    "text",
    [
        "2**3",
        "8//2",
        "8.0*3",
        "True + 23",
        "x + 1",
        "abs(-24)",
        "1 if 1 else 2",
        "[24][0]",
        "24,",
        "(1).__class__",
        "1_000",
        "1" + "0" * 12,
        "(" * 300 + "1" + ")" * 300,
        "1+" * 100 + "1",
        "",
        "   ",
    ],
)
def test_evaluate_rejects(text):
    with pytest.raises(Unparsable):
        evaluate(text)


def test_evaluate_respects_allowed_operators():
    with pytest.raises(Unparsable):
        evaluate("8*3", operators="+-")
    with pytest.raises(Unparsable):
        evaluate("-1+25", operators="+*")
    assert evaluate("20+4", operators="+").value == 24


def test_uses_numbers_rules():
    assert uses_numbers((1, 2, 3), [3, 2, 1], "all")
    assert not uses_numbers((1, 2), [3, 2, 1], "all")
    assert not uses_numbers((1, 1, 2, 3), [3, 2, 1], "all")
    assert uses_numbers((1, 2), [3, 2, 1], "at_most")
    assert not uses_numbers((1, 1), [3, 2, 1], "at_most")
    assert not uses_numbers((4,), [3, 2, 1], "at_most")


def test_expression_scores():
    assert verify(r1("45 - 29 + 18"), COUNTDOWN) == Verdict(1.0, True)
    assert verify(r1("18 + (45 - 29)"), COUNTDOWN).score == 1.0
    assert verify(r1("10*(8-5)-6"), PUZZLE24) == Verdict(1.0, True)
    assert verify(r1("(8 - 5) * 10 - 6"), PUZZLE24).score == 1.0
    fractions = row("expression", "", numbers=[3, 3, 8, 8], target=24, number_rule="all", operators="+-*/")
    assert verify(r1("8 / (3 - 8 / 3)"), fractions).score == 1.0


@pytest.mark.parametrize(
    "answer, task_row, parsed",
    [
        ("24", PUZZLE24, True),  # the bare target
        ("34", COUNTDOWN, True),
        ("4 * 6", PUZZLE24, True),  # the right value with the wrong numbers
        ("6 + 6 + 6 + 6", PUZZLE24, True),  # a number reused
        ("8 + 5 + 10 + 6", PUZZLE24, True),  # all the numbers, wrong value
        ("45 - 29 + 18 + 0", COUNTDOWN, True),  # an extra number
        ("10*(8-5)-6 = 24", PUZZLE24, False),  # the format says no '='
        ("8 * 3 = 24", PUZZLE24, False),
    ],
)
def test_expression_wrong(answer, task_row, parsed):
    verdict = verify(r1(answer), task_row)
    assert verdict.score == 0.0 and verdict.parsed is parsed, verdict


def test_expression_number_rules_per_row():
    all_numbers = row("expression", "", numbers=[18, 45, 29, 11], target=34, number_rule="all")
    at_most = row("expression", "", numbers=[18, 45, 29, 11], target=34, number_rule="at_most")
    assert verify(r1("45 - 29 + 18"), all_numbers).score == 0.0  # 11 is missing
    assert verify(r1("45 - 29 + 18"), at_most).score == 1.0
    assert verify(r1("45 - 29 + 18 + 11 - 11"), at_most).score == 0.0  # 11 twice


def test_expression_division_by_zero_is_wrong_not_an_error():
    zeros = row("expression", "", numbers=[2, 2, 6, 6], target=24, number_rule="all")
    assert verify(r1("6 / (2 - 2) * 6"), zeros) == Verdict(0.0, True, "division by zero")
    assert check_expression("6 / (2 - 2) * 6", [2, 2, 6, 6], 24).score == 0.0


# --- hostile completions, every verifier ----------------------------------------------------------

HOSTILE = [
    "__import__('os').system('touch {marker}')",
    "open('{marker}', 'w').write('x')",
    "(lambda: __import__('os').system('touch {marker}'))()",
    "exec(\"open('{marker}', 'w')\")",
    "eval(\"__import__('os').system('touch {marker}')\")",
    "().__class__.__base__.__subclasses__()",
    "9**9**9**9",
    "9^{9^{9^{9}}}",
    "10^{10^{10}}",
    "(10^{10})!",
    "(" * 10_000 + "24" + ")" * 10_000,
    "1" * 10**6,
    "2" + "4" * (10**6 - 1),
    "x" * 10**6,
    "\x00" * 1000,
    "24\x00",
    "2\x004",
    "\x00<answer>23</answer>",
    "1" + "0" * 1000,
    "10**1000",
    "２４",
    "٢٤",
    "\\boxed{" * 1000,
    "<answer>" * 1000,
]


@pytest.mark.parametrize("name", ["numeric", "countdown", "puzzle24", "math", "exact", "gym"])
def test_hostile_completions_score_zero_fast_and_run_nothing(name, gym_row, tmp_path):
    marker = tmp_path / "pwned"
    task_row = {"numeric": NUMERIC, "countdown": COUNTDOWN, "puzzle24": PUZZLE24, "math": MATH, "exact": EXACT}
    task_row = task_row.get(name, gym_row)
    for template in HOSTILE:
        answer = template.replace("{marker}", str(marker))
        for completion in (r1(answer), answer, f"<answer>{answer}", f"<think>{answer}</think><answer>{answer}</answer>"):
            verdict, seconds = timed(completion, task_row)
            assert isinstance(verdict, Verdict) and isinstance(verdict.score, float)
            # reasoning-gym's own scorers give partial credit (letter_counting: 1/12 for "10^{10^{10}}")
            assert verdict.score == 0.0 or (name == "gym" and verdict.score < 1.0), (name, answer[:60], verdict)
            assert seconds < 1.0, (name, answer[:60], seconds)
    assert list(tmp_path.iterdir()) == []


def test_reasoning_gym_own_scorer_would_run_the_code(tmp_path):
    """Why the expression checker exists: reasoning-gym's countdown scorer hands the text to sympy."""
    import reasoning_gym

    dataset = reasoning_gym.create_dataset("countdown", size=1, seed=0)
    marker = tmp_path / "pwned"
    dataset.score_answer(f"__import__('os').system('touch {marker}')", dataset[0])
    assert marker.exists()
    assert verify(r1(f"__import__('os').system('touch {tmp_path / 'ours'}')"), load_task("countdown", size=1)[0]).score == 0
    assert not (tmp_path / "ours").exists()


def test_verify_never_raises_on_garbage():
    assert verify(None, NUMERIC) == Verdict(0.0, False, "completion is not text")  # type: ignore[arg-type]
    assert verify(r1("1"), {}).score == 0.0
    assert verify(r1("1"), row("no-such-verifier", "1")).score == 0.0
    assert verify(r1("1"), row("expression", "1")).score == 0.0  # no numbers in the metadata
    assert verify(r1("1"), {"prompt": "p", "answer": None, "metadata": {"verifier": "numeric"}}).score == 0.0


# --- math -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "completion, score",
    [
        (r1("0.5"), 1.0),
        (r1("1/2"), 1.0),
        (r1("\\frac12"), 1.0),
        (r1("so the answer is \\boxed{\\frac{2}{4}}"), 1.0),
        ("<think>…</think> \\boxed{\\dfrac{1}{2}}", 1.0),
        (r1("0.6"), 0.0),
        (r1("\\frac{1}{3}"), 0.0),
    ],
)
def test_math(completion, score):
    assert verify(completion, MATH).score == score


def test_math_plain_numbers_are_exact_without_a_worker():
    gsm = row("math", "1,000")
    assert verify(r1("1000"), gsm) == Verdict(1.0, True)
    assert verify(r1("999.9999999"), gsm) == Verdict(0.0, True, "wrong number")


def test_math_pathological_input_times_out_and_the_next_answer_is_fine():
    verdict, seconds = timed(r1("9^{9^{9^{9}}}"), MATH)
    assert verdict.score == 0.0 and seconds < 1.0
    verdict, seconds = timed(r1("\\frac{1}{2}"), MATH)
    assert verdict.score == 1.0 and seconds < 1.0


def test_math_timeout_works_from_threads():
    results: list[tuple[float, float]] = []

    def check() -> None:
        for answer in ("10^{10^{10}}", "\\frac{2}{4}"):
            verdict, seconds = timed(r1(answer), MATH)
            results.append((verdict.score, seconds))

    threads = [threading.Thread(target=check) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(score for score, _ in results) == [0.0, 0.0, 1.0, 1.0]
    assert all(seconds < 1.0 for _, seconds in results)


# --- reasoning-gym's own scorers ------------------------------------------------------------------


def test_unsafe_gym_scorers_are_refused():
    for name in ("countdown", "puzzle24", "number_sorting", "codeio", "polynomial_multiplication", "composite"):
        assert gym_scorer_problem(name) is not None, name
    for name in ("letter_counting", "chain_sum", "gcd", "word_sorting"):
        assert gym_scorer_problem(name) is None, name


def test_gym_scorer_runs_in_the_worker(gym_row):
    assert gym_row["metadata"]["verifier"] == "gym"
    assert verify(r1(gym_row["answer"]), gym_row) == Verdict(1.0, True)
    assert verify(r1("not a count"), gym_row).score == 0.0


def test_refused_gym_scorer_falls_back_to_exact_match(tmp_path):
    task = load_task("number_sorting", size=2, seed=0)
    task_row = task[0]
    assert task_row["metadata"]["verifier"] == "exact"
    assert task.score(r1(task_row["answer"]), task_row) == 1.0
    marker = tmp_path / "pwned"
    assert task.score(r1(f"__import__('os').system('touch {marker}')"), task_row) == 0.0
    assert not marker.exists()


# --- reasoning-gym's reference answers score 1 ----------------------------------------------------


@pytest.mark.parametrize(
    "name, size, config",
    [
        ("countdown", 300, SPEEDRUN_COUNTDOWN),
        ("puzzle24", 40, {}),
        ("chain_sum", 200, {}),
        ("basic_arithmetic", 200, dict(max_digits=2, max_terms=4)),
        ("leg_counting", 200, {}),
    ],
)
def test_reference_answers_score_one(name, size, config):
    task = load_task(name, size=size, seed=1, **config)
    failures = [(r["answer"], v) for r in task for v in [task.verify(r1(r["answer"]), r)] if v.score != 1.0]
    assert failures == []


@pytest.mark.slow
def test_many_puzzle24_reference_answers_score_one():
    task = load_task("puzzle24", size=400, seed=2)
    assert all(task.score(r1(r["answer"]), r) == 1.0 for r in task)
