"""JSONL tasks: one JSON object per line, in one of two shapes.

- `{"prompt": str, "answer": str}` (`"question"` is accepted for `"prompt"`, as in GSM8K). An answer
  with `####` in it is a GSM8K solution: the answer is what follows the last `####`, and the whole
  solution is kept as `metadata["solution"]`.
- `{"messages": [{"role", "content"}, …]}`: the prompt is the conversation before the last assistant
  message (a list of messages, TRL's conversational format), the answer is that message's content
  (the reference answer, or what SFT trains on); the full list is kept as `metadata["messages"]`.

Other keys of a row, and the keys of a `"metadata"` object if it has one, go into `metadata`, with
`task`, `verifier` and `source` ("file:line"). Rows keep file order; `size` keeps the first `size`.
The verifier is the task's (`verifier="math"` by default; `numeric`, `exact`, or `expression`, which
needs integer `numbers` and `target` in each row's metadata). Blank lines are skipped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from frugal_r1.errors import UserError

JSONL_VERIFIERS = ("math", "numeric", "exact", "expression")
_SHAPES = 'a row is {"prompt": ..., "answer": ...} or {"messages": [{"role": ..., "content": ...}, ...]}'


def _answer_text(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise UserError(f"{where}: 'answer' must be a string or a number, got {type(value).__name__}")


def _from_messages(messages: Any, where: str) -> tuple[list[dict[str, Any]], str]:
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in messages
    ):
        raise UserError(f"{where}: 'messages' must be a list of {{\"role\": str, \"content\": str}}")
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise UserError(f"{where}: 'messages' has no assistant message to take the answer from")
    if last == 0:
        raise UserError(f"{where}: 'messages' has nothing before its last assistant message")
    return messages[:last], messages[last]["content"]


def _row(obj: Any, where: str, name: str, verifier: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a JSON object; {_SHAPES}")
    extra = {k: v for k, v in obj.items() if k not in ("prompt", "question", "answer", "messages", "metadata")}
    metadata = dict(obj["metadata"]) if isinstance(obj.get("metadata"), dict) else {}
    metadata.update(extra)
    if "messages" in obj:
        prompt, answer = _from_messages(obj["messages"], where)
        metadata["messages"] = obj["messages"]
    else:
        prompt = obj.get("prompt", obj.get("question"))
        missing = [field for field, value in (("prompt", prompt), ("answer", obj.get("answer"))) if value is None]
        if missing:
            raise UserError(f"{where}: missing field(s) {', '.join(map(repr, missing))}; {_SHAPES}")
        if not isinstance(prompt, str):
            raise UserError(f"{where}: 'prompt' must be a string, got {type(prompt).__name__}")
        answer = _answer_text(obj["answer"], where)
        if "####" in answer:
            metadata["solution"] = answer
            answer = answer.rsplit("####", 1)[1].strip()
    if verifier == "expression":
        numbers, target = metadata.get("numbers"), metadata.get("target")
        if not (isinstance(numbers, list) and all(type(n) is int for n in numbers) and type(target) is int):
            raise UserError(f"{where}: verifier 'expression' needs integer 'numbers' (a list) and 'target'")
    metadata.update(task=name, verifier=verifier, source=where)
    return {"prompt": prompt, "answer": answer, "metadata": metadata}


def jsonl_rows(path: str, size: int | None = None, verifier: str = "math") -> list[dict[str, Any]]:
    """The rows of the JSONL file at `path` (at most `size`). Raises UserError with file:line."""
    if verifier not in JSONL_VERIFIERS:
        raise UserError(f"jsonl:{path}: unknown verifier {verifier!r}; choose one of {', '.join(JSONL_VERIFIERS)}")
    if size is not None and (not isinstance(size, int) or size < 1):
        raise UserError(f"jsonl:{path}: size must be a positive integer, got {size!r}")
    file = Path(path)
    if not file.is_file():
        raise UserError(f"jsonl:{path}: no such file")
    name = f"jsonl:{path}"
    rows: list[dict[str, Any]] = []
    with file.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            if size is not None and len(rows) >= size:
                break
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise UserError(f"{where}: not UTF-8 text") from None
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as error:
                raise UserError(f"{where}: not valid JSON ({error.msg}, column {error.colno})") from None
            rows.append(_row(obj, where, name, verifier))
    if not rows:
        raise UserError(f"jsonl:{path}: the file has no rows; {_SHAPES}, one per line")
    return rows
