"""Reading searches back (traces/search_errors.py): teacher traces read as right; each kind of mistake is named."""

from __future__ import annotations

import random

import pytest

from frugal_r1.tasks import load_task
from frugal_r1.traces import make_trace
from frugal_r1.traces.__main__ import TASK_CONFIGS
from frugal_r1.traces.search_errors import read_search

HIT = "48-21=27, left 41 15 27.\n41-27=14, left 15 14: 15+14=29, 15-14=1, none is 43.\nWait, back to 48 21 41 15.\n"
WIN = "48-41=7, left 21 15 7.\n21+15=36, left 7 36: 36+7=43, found 43.\n"
HEAD = "Numbers 48 21 41 15, target 43.\n"
TAIL = ("Check 48-41=7 is 48 - 41, 21+15=36 is 21 + 15, 36+7=43 is 21 + 15 + (48 - 41). Uses 21 15 48 41.\n"
        "</think>\n<answer>x</answer>")


def _read(search: str, tail: str = TAIL):
    return read_search(HEAD + search + tail, [48, 21, 41, 15], 43)


@pytest.mark.parametrize("name", ["countdown", "puzzle24"])
def test_teacher_traces_read_as_right(name):
    task = load_task(name, size=40, seed=7, **TASK_CONFIGS[name])
    for index in range(40):
        row = task[index]
        reading = read_search(make_trace(name, row, random.Random(index)), row["metadata"]["numbers"],
                              row["metadata"].get("target", 24))
        assert reading.first_error == "none"
        assert reading.left_checks and all(right for _, right in reading.left_checks)
        assert {depth for depth, _ in reading.left_checks} <= {1, 2}


def test_a_right_search():
    reading = _read(HIT + WIN)
    assert reading.first_error == "none"
    assert reading.left_checks == [(1, True), (2, True), (1, True), (2, True)]


@pytest.mark.parametrize("wrong, error, checks", [
    (WIN.replace("left 21 15 7.", "left 48 15 7."), "left", [(1, False), (2, False)]),  # an operand kept
    (WIN.replace("48-41=7, left 21 15 7.", "48-40=8, left 21 15 8.").replace("left 7 36: 36+7", "left 8 36: 36+8"),
     "operand", [(1, False), (2, True)]),
    (WIN.replace("left 21 15 7.", "left 21 41 7."), "left", [(1, False), (2, False)]),
    (WIN.replace("48-41=7", "48-41=8").replace("left 21 15 7.", "left 21 15 8."), "fact", [(1, True), (2, False)]),
    (WIN.replace("left 7 36:", "left 8 36:"), "left", [(1, True), (2, False)]),
    (WIN.replace("36+7=43", "36+7=44"), "final fact", [(1, True), (2, True)]),
    (WIN.replace("36+7=43, found", "36-7=29, found"), "missed", [(1, True), (2, True)]),
])
def test_the_first_mistake_on_the_winning_path_is_named(wrong, error, checks):
    reading = _read(HIT + wrong)
    assert reading.first_error == error
    assert reading.left_checks == [(1, True), (2, True)] + checks


def test_searches_without_a_hit():
    assert _read(HIT, tail="</think>\n<answer>48</answer>").first_error == "no found"
    assert _read(HIT + HIT, tail="").first_error == "truncated"
