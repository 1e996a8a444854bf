"""Pull the final answer out of a completion in the R1 format.

A completion is `<think>…</think>\\n<answer>…</answer>`. The answer is the text of the last well-formed
pair: the last `<answer>` that is followed by a `</answer>`, up to the first `</answer>` after it. No pair
means no parsable answer (`None`), which the eval counts apart from a wrong answer.

For math, a `\\boxed{…}` inside that answer wins (models trained on math write one); with no answer pair
at all, the last `\\boxed{…}` of the whole completion is taken. Braces must balance; `\\{` and `\\}` are
literal braces and do not count.

Every function here is a few `str.find`/`rfind` scans plus at most `MAX_BOXED_TRIES` bounded brace
walks, so a 10^6-character completion costs milliseconds; there is no regex to backtrack.
"""

from __future__ import annotations

ANSWER_OPEN = "<answer>"
ANSWER_CLOSE = "</answer>"
BOXED = "\\boxed"
MAX_BOXED_CHARS = 10_000  # a \boxed{} longer than this is not an answer
MAX_BOXED_TRIES = 4  # unbalanced \boxed{ at the end: try a few earlier ones, not all of them


def answer_tag(completion: str) -> str | None:
    """Text of the last well-formed `<answer>…</answer>` pair, stripped; None if there is none."""
    if not isinstance(completion, str):
        return None
    last_close = completion.rfind(ANSWER_CLOSE)
    if last_close < 0:
        return None
    start = completion.rfind(ANSWER_OPEN, 0, last_close)
    if start < 0:
        return None
    start += len(ANSWER_OPEN)
    # A stray `</answer>` may follow the pair ("<answer>a</answer>b</answer>"): close at the first one.
    end = completion.find(ANSWER_CLOSE, start, last_close + len(ANSWER_CLOSE))
    return completion[start:end].strip()


def _braced(text: str, open_brace: int) -> str | None:
    """Content of the `{…}` group opening at `open_brace`, or None if it does not close in time."""
    depth = 0
    i = open_brace
    stop = min(len(text), open_brace + MAX_BOXED_CHARS)
    while i < stop:
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[open_brace + 1 : i]
        i += 1
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{…}` with balanced braces, stripped; None if there is none."""
    if not isinstance(text, str):
        return None
    end = len(text)
    for _ in range(MAX_BOXED_TRIES):
        at = text.rfind(BOXED, 0, end)
        if at < 0:
            return None
        brace = at + len(BOXED)
        while brace < len(text) and text[brace] == " ":
            brace += 1
        if brace < len(text) and text[brace] == "{":
            content = _braced(text, brace)
            if content is not None:
                return content.strip()
        end = at
    return None


def math_answer(completion: str) -> str | None:
    """The answer for math: a `\\boxed{}` inside the last answer pair, else that pair, else the last
    `\\boxed{}` anywhere; None if there is none of these."""
    tagged = answer_tag(completion)
    if tagged is None:
        return last_boxed(completion)
    boxed = last_boxed(tagged)
    return tagged if boxed is None else boxed
