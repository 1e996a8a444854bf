"""The two R1 text formats: the R1-Zero template and the chat format, plus helpers to read completions.

Everything here is plain strings, no tokenizer; `frugal_r1.tokenizer` turns these strings into ids.

R1-Zero (DeepSeek-R1 paper, Table 1) -- a base model is prompted with an instruction and continues
after "Assistant:"; it is expected to write `<think> ... </think> <answer> ... </answer>`:

    A conversation between User and Assistant. ... User: {question}. Assistant:

Chat format (DeepSeek-R1's, with frugal-r1's marker spelling), for a system message S, user turns
U1, U2 and an earlier assistant turn whose full text was `<think>\\nR1\\n</think>\\n<answer>A1</answer>`:

    <|bos|>S<|User|>U1<|Assistant|><answer>A1</answer><|eos|><|User|>U2<|Assistant|><think>\\n

Design choices:
- The generation prompt is `<|Assistant|><think>\\n`: thinking is forced open (as DeepSeek-R1 does),
  so a completion is `{reasoning}\\n</think>\\n<answer>{answer}</answer>` and the model ends it with
  `<|eos|>`. An assistant message's content holds the full visible text, `<think>\\n` included, so
  `render_chat(msgs + [reply], False) == render_chat(msgs, True) + completion + EOS`.
- Reasoning is stripped from assistant turns before the last user turn (content after the last
  `</think>`, left-stripped), as DeepSeek's template does; turns after the last user turn keep it,
  because those are the turns being trained on.
- A system message may only come first; it is written straight after `<|bos|>` with no marker.
- `CHAT_TEMPLATE` is the same format in Jinja for transformers' `apply_chat_template` (and vLLM);
  tests check the two agree character for character.
- The markers are `<|User|>`/`<|Assistant|>` (ASCII bars) rather than DeepSeek's fullwidth `<｜User｜>`:
  frugal-r1 trains its own vocabulary, where each marker is one special id either way, and ASCII keeps
  recipes, JSONL files and terminals free of look-alike characters. Our tokenizer is not DeepSeek's,
  so nothing is gained by copying its spelling.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from frugal_r1.errors import UserError

BOS = "<|bos|>"
EOS = "<|eos|>"
PAD = "<|pad|>"
USER = "<|User|>"
ASSISTANT = "<|Assistant|>"
THINK_START = "<think>"
THINK_END = "</think>"
ANSWER_START = "<answer>"
ANSWER_END = "</answer>"

GENERATION_PROMPT = ASSISTANT + THINK_START + "\n"

R1_ZERO_TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with "
    "the answer. The reasoning process and answer are enclosed within <think> </think> and <answer> "
    "</answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here "
    "</answer>. User: {prompt}. Assistant:"
)

# Jinja twin of `render_chat`; string literals only, so whitespace control cannot change the output.
CHAT_TEMPLATE = (
    "{%- set ns = namespace(last_user=-1) -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}"
    "{%- endfor -%}"
    "{{- '" + BOS + "' -}}"
    "{%- for message in messages -%}"
    "{%- if message['content'] is not string -%}"
    "{{- raise_exception('message content must be a string') -}}"
    "{%- elif message['role'] == 'system' -%}"
    "{%- if not loop.first -%}{{- raise_exception('a system message may only come first') -}}{%- endif -%}"
    "{{- message['content'] -}}"
    "{%- elif message['role'] == 'user' -%}"
    "{{- '" + USER + "' + message['content'] -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{%- set content = message['content'] -%}"
    "{%- if loop.index0 < ns.last_user and '" + THINK_END + "' in content -%}"
    "{%- set content = content.split('" + THINK_END + "')[-1].lstrip() -%}"
    "{%- endif -%}"
    "{{- '" + ASSISTANT + "' + content + '" + EOS + "' -}}"
    "{%- else -%}"
    "{{- raise_exception('unknown role ' + message['role'] + '; use system, user or assistant') -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '" + ASSISTANT + THINK_START + "\\n' -}}{%- endif -%}"
)


def r1_zero_prompt(question: str) -> str:
    """The R1-Zero prompt for `question` (surrounding whitespace removed); no bos, see `encode_prompt`."""
    return R1_ZERO_TEMPLATE.format(prompt=question.strip())


def strip_reasoning(content: str) -> str:
    """What an earlier assistant turn shows in history: the text after the last `</think>`, left-stripped."""
    return content.split(THINK_END)[-1].lstrip() if THINK_END in content else content


def render_chat(messages: Sequence[Mapping[str, str]], add_generation_prompt: bool) -> str:
    """Render `[{"role": ..., "content": ...}, ...]` in the chat format (see the module docstring)."""
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    parts = [BOS]
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if not isinstance(content, str):
            raise UserError(f"message {i} ({role}): content must be a string, got {type(content).__name__}")
        if role == "system":
            if i != 0:
                raise UserError(f"message {i}: a system message may only come first")
            parts.append(content)
        elif role == "user":
            parts.append(USER + content)
        elif role == "assistant":
            parts.append(ASSISTANT + (strip_reasoning(content) if i < last_user else content) + EOS)
        else:
            raise UserError(f"message {i}: unknown role {role!r}; use system, user or assistant")
    if add_generation_prompt:
        parts.append(GENERATION_PROMPT)
    return "".join(parts)


def format_completion(reasoning: str, answer: str) -> str:
    """What the model writes after the generation prompt: `{reasoning}\\n</think>\\n<answer>{answer}</answer>`."""
    return f"{reasoning}\n{THINK_END}\n{ANSWER_START}{answer}{ANSWER_END}"


def format_assistant(reasoning: str, answer: str) -> str:
    """The full content of an assistant message: `<think>\\n` + `format_completion(reasoning, answer)`."""
    return f"{THINK_START}\n" + format_completion(reasoning, answer)


def format_trace(question: str, reasoning: str, answer: str) -> str:
    """A pretraining document: `{question}\\n<think>\\n{reasoning}\\n</think>\\n<answer>{answer}</answer>`."""
    return f"{question}\n" + format_assistant(reasoning, answer)


def split_reasoning(text: str) -> tuple[str, str]:
    """Split a completion or assistant content into (reasoning, content), both stripped.

    With a `</think>`, reasoning is the text before the last one (a leading `<think>` dropped) and content
    the text after it. Without one, an unclosed `<think>...` is all reasoning; anything else is all content.
    """
    head, found, tail = text.rpartition(THINK_END)
    if not found:
        stripped = text.strip()
        if stripped.startswith(THINK_START):
            return stripped[len(THINK_START):].strip(), ""
        return "", stripped
    head = head.strip()
    if head.startswith(THINK_START):
        head = head[len(THINK_START):].strip()
    return head, tail.strip()


_ANSWER = re.compile(re.escape(ANSWER_START) + r"(.*?)" + re.escape(ANSWER_END), re.DOTALL)


def extract_answer(text: str) -> str | None:
    """The stripped text of the last complete `<answer>...</answer>` after the reasoning, or None."""
    matches = _ANSWER.findall(split_reasoning(text)[1])
    return matches[-1].strip() if matches else None
