"""`frugal-r1 chat`: a terminal chat with a model directory, streamed token by token.

The reply streams as it is generated; the thinking (the text inside `<think>…</think>`) is shown dimmed
apart from the answer, or, with `--thinking fold`, folded into one line with its length (`/think`
prints the last one in full). As DeepSeek-R1 does, the conversation keeps only the answers: earlier
reasoning is never fed back to the model (an assistant turn is stored as the text after `</think>`).
Commands: `/reset` starts over, `/think` shows the last reasoning, `/exit` (or end of input) leaves.
Ctrl-C while a reply streams stops that reply (it is not added to the conversation).

Generation runs on the server's scheduler in-process (serve/batcher.py), so chat, serve and eval share
one decode path and the streaming text split (serve/stream.py).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from typing import Any

from frugal_r1.chat import THINK_END, THINK_START
from frugal_r1.errors import UserError

COMMANDS_HELP = "/reset starts over · /think shows the last reasoning · /exit leaves"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("chat", help="chat with a model in the terminal (streams; thinking shown apart)")
    parser.add_argument("--model", required=True, metavar="DIR", help="a model directory (ours or transformers)")
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    parser.add_argument("--seed", type=int, help="seed the sampler (each turn draws from seed + turn)")
    parser.add_argument("--system", help="a system message")
    parser.add_argument("--thinking", choices=["show", "fold"], default="show",
                        help="show the reasoning dimmed, or fold it into one line")
    parser.add_argument("--backend", default="auto", choices=["auto", "frugal", "hf"])
    parser.set_defaults(func=run)


class ChatSession:
    """A conversation with a model: `reply(text)` streams ("reasoning" | "content", delta) pairs."""

    def __init__(self, backend: Any, scheduler: Any, *, temperature: float = 0.6, top_p: float = 0.95,
                 max_new_tokens: int = 1024, seed: int | None = None, system: str | None = None):
        from frugal_r1.generate.backend import SamplingParams

        self.backend = backend
        self.scheduler = scheduler
        self.params = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
        self.seed = seed
        self.system = system
        self.messages: list[dict[str, str]] = []
        self.last_reasoning = ""
        self.turns = 0
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self.last_reasoning = ""

    def prompt_ids(self) -> tuple[list[int], bool]:
        from frugal_r1.eval import chat_prompt, opens_thinking
        from frugal_r1.tokenizer import encode_prompt

        prompt = chat_prompt(self.backend.tokenizer, self.messages)
        return encode_prompt(self.backend.tokenizer, prompt), opens_thinking(prompt)

    def reply(self, text: str) -> Iterator[tuple[str, str]]:
        """Stream the model's reply to `text`; the turn joins the conversation once the reply is complete."""
        from dataclasses import replace

        from frugal_r1.serve.batcher import Done, Failed, Update
        from frugal_r1.serve.stream import ChoiceStream, split_visible

        self.messages.append({"role": "user", "content": text})
        complete = False
        try:
            ids, opened = self.prompt_ids()
            if len(ids) >= self.backend.context_length:
                raise UserError(f"the conversation ({len(ids)} tokens) no longer fits the "
                                f"{self.backend.context_length}-token context; /reset to start over")
            seed = None if self.seed is None else self.seed + self.turns
            stream = ChoiceStream(self.backend.tokenizer, opened, (), ids)
            for event in self.scheduler.events(ids, replace(self.params, seed=seed)):
                if isinstance(event, Failed):
                    raise UserError(event.message)
                if isinstance(event, Update):
                    for token in event.tokens.values():
                        yield from _pairs(*stream.feed([token]))
                    for completion in event.finished.values():
                        yield from _pairs(*stream.finish(completion.text))
                if isinstance(event, Done):
                    text = event.completions[0].text
                    self.last_reasoning = split_visible(text, True, opened)[0]
                    self.messages.append({"role": "assistant", "content": answer_part(text, opened)})
                    self.turns += 1
                    complete = True
        finally:
            if not complete:
                self.messages.pop()


def answer_part(text: str, opened: bool) -> str:
    """What the conversation keeps of a reply: the text after `</think>` (nothing when it never closed)."""
    if not opened and not text.lstrip().startswith(THINK_START):
        return text.strip()
    head, found, tail = text.partition(THINK_END)
    return tail.strip() if found else ""


def _pairs(reasoning: str, content: str) -> Iterator[tuple[str, str]]:
    if reasoning:
        yield "reasoning", reasoning
    if content:
        yield "content", content


def chat_loop(session: ChatSession, console: Any, read_line: Callable[[], str], thinking: str = "show") -> None:
    """Read lines until /exit or end of input; stream each reply to `console` (a rich Console)."""
    console.print(f"[bold]frugal-r1 chat[/] · {COMMANDS_HELP}")
    while True:
        try:
            line = read_line()
        except (EOFError, KeyboardInterrupt):
            console.print()
            return
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return
        if text == "/reset":
            session.reset()
            console.print("[dim](conversation cleared)[/]")
            continue
        if text == "/think":
            console.print(session.last_reasoning or "(no reasoning yet)", style="dim", markup=False, highlight=False)
            continue
        if text.startswith("/"):
            console.print(f"unknown command {text.split()[0]}; {COMMANDS_HELP}", markup=False)
            continue
        _stream_reply(session, console, text, thinking)


def _stream_reply(session: ChatSession, console: Any, text: str, thinking: str) -> None:
    kind_shown, reasoning_chars = None, 0
    reply = session.reply(text)
    try:
        for kind, delta in reply:
            if kind == "reasoning":
                reasoning_chars += len(delta)
                if thinking == "fold":
                    continue
                if kind_shown is None:
                    console.print("thinking: ", style="dim bold", end="")
                console.print(delta, style="dim", end="", markup=False, highlight=False)
            else:
                if kind_shown != "content":
                    if kind_shown == "reasoning":
                        console.print()
                    if thinking == "fold" and reasoning_chars:
                        console.print(f"▸ thought for {reasoning_chars} characters (/think shows it)", style="dim")
                    console.print("answer: ", style="bold", end="")
                console.print(delta, end="", markup=False, highlight=False)
            kind_shown = kind
        console.print()
    except KeyboardInterrupt:
        console.print("\n[dim](stopped; this turn is not kept)[/]")
    except UserError as error:
        console.print(f"\nerror: {error}", style="red", markup=False)
    finally:
        reply.close()  # cancels the request if it is still running


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from frugal_r1.generate import load_backend
    from frugal_r1.serve.batcher import Scheduler

    backend = load_backend(args.model, backend=args.backend)
    if backend.tokenizer is None:
        raise UserError(f"{args.model} has no tokenizer; chat needs one")
    scheduler = Scheduler(backend, batch_window_s=0).start()
    session = ChatSession(backend, scheduler, temperature=args.temperature, top_p=args.top_p,
                          max_new_tokens=args.max_new_tokens, seed=args.seed, system=args.system)
    console = Console(highlight=False)
    try:
        chat_loop(session, console, lambda: console.input("[bold green]you>[/] "), args.thinking)
    finally:
        scheduler.stop()
    return 0
