"""Text for streaming: token ids → text deltas, and DeepSeek's split of reasoning from content.

`split_visible(raw, final, opened)` turns a completion's raw text into (reasoning_content, content):
- reasoning is the text inside `<think>…</think>`, stripped. Our chat prompt already opens `<think>\\n`
  (`opened`), so generated text is reasoning until the first `</think>`; for a prompt that did not open
  one, a completion that starts with `<think>` is read the same way, and any other is all content.
  Without a `</think>` (cut by max_tokens) everything generated is reasoning and content is empty.
- content is the text after `</think>`, stripped, with a surrounding `<answer>…</answer>` wrapper
  removed: R1's format ends with `<answer>A</answer>` and DeepSeek's `content` is the answer, A.
  Text after the closing `</answer>` (a model that keeps going) is kept, tag included.
- While `final` is False the result is conservative: it leaves out whatever later text could still
  change — a partial `</think>`, `<answer>` or `</answer>` tag, a partial stop string, trailing
  whitespace, an unfinished UTF-8 character — so each value is a prefix of the final one and a stream
  can send the difference and never take anything back. Streaming and non-streaming replies therefore
  agree: the concatenated deltas equal the final split.

`Detokenizer` decodes incrementally (the prefix/read offsets vLLM uses): each new token costs a decode
of a few tokens, not of the whole completion. `ChoiceStream` combines the two for one choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from frugal_r1.chat import ANSWER_END, ANSWER_START, THINK_END, THINK_START
from frugal_r1.generate.backend import decode_text

REPLACEMENT = "\ufffd"  # what decoding shows for the first bytes of an unfinished UTF-8 character


def hold_partial(text: str, tags: Sequence[str]) -> str:
    """`text` without its longest suffix that is a proper prefix of one of `tags`."""
    cut = 0
    for tag in tags:
        for k in range(min(len(tag) - 1, len(text)), cut, -1):
            if text.endswith(tag[:k]):
                cut = k
                break
    return text[:len(text) - cut] if cut else text


def clean_content(raw: str, final: bool) -> str:
    """The text after `</think>` as content: stripped, `<answer>…</answer>` unwrapped (see the module)."""
    text = raw.lstrip()
    if not text.startswith(ANSWER_START):
        if not final and ANSWER_START.startswith(text):
            return ""  # may still become "<answer>"
        return text.strip() if final else hold_partial(text, [ANSWER_START]).strip()
    body = text[len(ANSWER_START):]
    end = body.find(ANSWER_END)
    if end >= 0:
        if final and body[end + len(ANSWER_END):].strip():
            return body.strip()
        return body[:end].strip()
    return body.strip() if final else hold_partial(body, [ANSWER_END]).strip()


def split_visible(raw: str, final: bool, opened: bool) -> tuple[str, str]:
    """(reasoning, content) of a completion's raw text; conservative while not `final`."""
    if not opened:
        text = raw.lstrip()
        if text.startswith(THINK_START):
            raw = text[len(THINK_START):]
        elif not final and THINK_START.startswith(text):
            return "", ""
        else:
            return "", clean_content(raw, final)
    head, found, tail = raw.partition(THINK_END)
    if not found:
        return (head if final else hold_partial(head, [THINK_END])).strip(), ""
    return head.strip(), clean_content(tail, final)


def thinks(raw: str, opened: bool) -> bool:
    """Whether the completion has a reasoning part at all (for `reasoning_content`: "" vs null)."""
    return opened or raw.lstrip().startswith(THINK_START)


class Detokenizer:
    """Incremental decoding of one sequence: `add(ids)` returns the new, complete text."""

    def __init__(self, tokenizer: Any, prompt_tail: Sequence[int] = ()):
        self.tokenizer = tokenizer
        # A few prompt tokens as context, so the first generated token decodes as it would in place.
        self.ids: list[int] = list(prompt_tail)[-4:]
        self.prefix_offset = 0
        self.read_offset = len(self.ids)
        self.text = ""

    def add(self, ids: Sequence[int]) -> str:
        self.ids.extend(int(i) for i in ids)
        prefix = decode_text(self.tokenizer, self.ids[self.prefix_offset:self.read_offset])
        full = decode_text(self.tokenizer, self.ids[self.prefix_offset:])
        if len(full) <= len(prefix) or full.endswith(REPLACEMENT):
            return ""
        new = full[len(prefix):]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        self.text += new
        return new


class ChoiceStream:
    """One choice of a streamed reply: feed token ids, get (reasoning delta, content delta)."""

    def __init__(self, tokenizer: Any, opened: bool, stop_strings: Sequence[str] = (),
                 prompt_tail: Sequence[int] = ()):
        self.detokenizer = Detokenizer(tokenizer, prompt_tail)
        self.opened = opened
        self.stops = list(stop_strings)
        self.reasoning = ""
        self.content = ""

    def _advance(self, raw: str, final: bool) -> tuple[str, str]:
        reasoning, content = split_visible(raw, final, self.opened)
        # Both are prefixes of what was sent before (see the module docstring); only the rest is new.
        delta = (reasoning[len(self.reasoning):], content[len(self.content):])
        self.reasoning, self.content = reasoning, content
        return delta

    def feed(self, ids: Sequence[int]) -> tuple[str, str]:
        self.detokenizer.add(ids)
        return self._advance(hold_partial(self.detokenizer.text, self.stops), final=False)

    def finish(self, text: str) -> tuple[str, str]:
        """The completion's final text (cut at its stop string, without the stop token)."""
        return self._advance(text, final=True)


__all__ = ["split_visible", "clean_content", "hold_partial", "thinks", "Detokenizer", "ChoiceStream"]
