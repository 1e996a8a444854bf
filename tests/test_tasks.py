"""Tasks: reasoning-gym datasets and JSONL files behind one `load_task`, and their errors."""

from __future__ import annotations

import json

import pytest

from frugal_r1.errors import UserError
from frugal_r1.tasks import Task, load_task

SPEEDRUN = {
    "chain_sum": {},
    "basic_arithmetic": dict(max_digits=2, max_terms=4),
    "leg_counting": {},
    "countdown": dict(min_numbers=3, max_numbers=4, min_value=1, max_value=50, min_target=10, max_target=100),
    "puzzle24": {},
}
VERIFIER = {"chain_sum": "numeric", "basic_arithmetic": "numeric", "leg_counting": "numeric"}


def r1(answer: str) -> str:
    return f"<think>…</think>\n<answer>{answer}</answer>"


def write_jsonl(path, lines) -> str:
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return str(path)


@pytest.mark.parametrize("name", sorted(SPEEDRUN))
def test_load_gym_task(name):
    task = load_task(name, size=6, seed=3, **SPEEDRUN[name])
    assert isinstance(task, Task) and task.name == name and len(task) == 6
    first = task[0]
    assert set(first) == {"prompt", "answer", "metadata"}
    assert isinstance(first["prompt"], str) and isinstance(first["answer"], str)
    assert first["metadata"]["task"] == name
    assert first["metadata"]["verifier"] == VERIFIER.get(name, "expression")
    assert task[-6] == first and len(list(task.rows())) == 6
    assert load_task(name, size=6, seed=3, **SPEEDRUN[name])[0] == first  # deterministic
    assert task.score(r1(first["answer"]), first) == 1.0
    with pytest.raises(IndexError):
        task[6]


def test_gym_config_passes_through_and_rows_carry_the_number_rule():
    task = load_task("countdown", size=20, seed=0, **dict(SPEEDRUN["countdown"], min_numbers=3, max_numbers=3))
    for item in task:
        assert len(item["metadata"]["numbers"]) == 3
        assert item["metadata"]["number_rule"] == "all"
    puzzle = load_task("puzzle24", size=1, operators=("+", "*"))[0]
    assert puzzle["metadata"]["target"] == 24 and puzzle["metadata"]["operators"] == "+*"


def test_rows_are_copies():
    task = load_task("chain_sum", size=2)
    task[0]["metadata"]["task"] = "changed"
    assert task[0]["metadata"]["task"] == "chain_sum"


def test_unknown_task_suggests_close_matches():
    with pytest.raises(UserError, match="did you mean countdown"):
        load_task("countdwn")
    with pytest.raises(UserError, match="jsonl:PATH"):
        load_task("no_such_thing_at_all")
    with pytest.raises(UserError, match="jsonl:data.jsonl"):
        load_task("data.jsonl")


def test_bad_gym_config():
    with pytest.raises(UserError, match="unknown config key.*min_numbrs"):
        load_task("countdown", size=2, min_numbrs=3)
    with pytest.raises(UserError, match="countdown: invalid config"):
        load_task("countdown", size=2, min_numbers=1)
    with pytest.raises(UserError, match="positive"):
        load_task("countdown", size=0)


def test_jsonl_prompt_answer_rows(tmp_path):
    path = write_jsonl(
        tmp_path / "math.jsonl",
        [
            {"prompt": "What is 1/2 as a decimal?", "answer": "0.5", "id": 7},
            "",
            {"question": "Natalia sold 48 clips…", "answer": "She sold 48/2 = 24 …\n#### 72"},
            {"prompt": "2+2?", "answer": 4, "metadata": {"level": 1}},
        ],
    )
    task = load_task(f"jsonl:{path}")
    assert len(task) == 3 and task.name == f"jsonl:{path}"
    first, gsm, numeric = task[0], task[1], task[2]
    assert first["metadata"] == {"id": 7, "task": f"jsonl:{path}", "verifier": "math", "source": f"{path}:1"}
    assert gsm["prompt"] == "Natalia sold 48 clips…" and gsm["answer"] == "72"
    assert gsm["metadata"]["solution"].endswith("#### 72") and gsm["metadata"]["source"] == f"{path}:3"
    assert numeric["answer"] == "4" and numeric["metadata"]["level"] == 1
    assert task.score(r1("\\frac{1}{2}"), first) == 1.0
    assert task.score(r1("72"), gsm) == 1.0 and task.score(r1("71"), gsm) == 0.0
    assert len(load_task(f"jsonl:{path}", size=2)) == 2


def test_jsonl_messages_rows(tmp_path):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+3?"},
        {"role": "assistant", "content": "<think>2+3=5</think>\n<answer>5</answer>"},
    ]
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": messages}])
    item = load_task(f"jsonl:{path}", verifier="numeric")[0]
    assert item["prompt"] == messages[:2]
    assert item["answer"] == messages[2]["content"]
    assert item["metadata"]["messages"] == messages and item["metadata"]["verifier"] == "numeric"


def test_jsonl_expression_rows(tmp_path):
    path = write_jsonl(tmp_path / "cd.jsonl", [{"prompt": "Make 24", "answer": "4*6", "metadata": {"numbers": [4, 6], "target": 24}}])
    task = load_task(f"jsonl:{path}", verifier="expression")
    assert task.score(r1("6*4"), task[0]) == 1.0 and task.score(r1("24"), task[0]) == 0.0
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "Make 24", "answer": "4*6"}])
    with pytest.raises(UserError, match=f"{bad}:1: verifier 'expression' needs"):
        load_task(f"jsonl:{bad}", verifier="expression")


@pytest.mark.parametrize(
    "lines, message",
    [
        ([{"prompt": "a", "answer": "1"}, {"prompt": "b"}], r":2: missing field\(s\) 'answer'"),
        ([{"answer": "1"}], r":1: missing field\(s\) 'prompt'"),
        (["{not json"], r":1: not valid JSON"),
        (["[1, 2]"], r":1: expected a JSON object"),
        ([{"messages": [{"role": "user", "content": "hi"}]}], r":1: 'messages' has no assistant message"),
        ([{"messages": [{"role": "assistant", "content": "hi"}]}], r":1: 'messages' has nothing before"),
        ([{"messages": "hi"}], r":1: 'messages' must be a list"),
        ([{"prompt": "a", "answer": True}], r":1: 'answer' must be a string or a number"),
        ([""], r"no rows"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path, lines, message):
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(UserError, match=message) as error:
        load_task(f"jsonl:{path}")
    assert str(path) in str(error.value)


def test_jsonl_file_errors(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(UserError, match="no rows"):
        load_task(f"jsonl:{empty}")
    with pytest.raises(UserError, match="no such file"):
        load_task(f"jsonl:{tmp_path / 'missing.jsonl'}")
    path = write_jsonl(tmp_path / "ok.jsonl", [{"prompt": "a", "answer": "1"}])
    with pytest.raises(UserError, match="unknown config key.*seeds"):
        load_task(f"jsonl:{path}", seeds=3)
    with pytest.raises(UserError, match="unknown verifier 'sympy'"):
        load_task(f"jsonl:{path}", verifier="sympy")
