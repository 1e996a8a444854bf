"""`frugal-r1 chat`: the loop driven with scripted input, and the command in a pseudo-terminal."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest
from rich.console import Console

from frugal_r1.chat_cli import ChatSession, chat_loop
from frugal_r1.generate import load_backend
from frugal_r1.serve import Scheduler
from frugal_r1.tokenizer import decode
from tiny_model import ANSWER, REASONING, one_thread, tiny_model_dir


@pytest.fixture(scope="module")
def model_dir():
    with one_thread():
        yield tiny_model_dir()


@pytest.fixture
def session(model_dir):
    backend = load_backend(model_dir)
    scheduler = Scheduler(backend, batch_window_s=0).start()
    yield ChatSession(backend, scheduler, temperature=0, max_new_tokens=40)
    scheduler.stop()


def lines(*items: str):
    queue = list(items)

    def read() -> str:
        if not queue:
            raise EOFError
        return queue.pop(0)

    return read, queue


def run_loop(session, *items: str, thinking: str = "show", console: Console | None = None) -> tuple[str, list]:
    out = io.StringIO()
    console = console or Console(file=out, width=200, force_terminal=False)
    read, rest = lines(*items)
    chat_loop(session, console, read, thinking)
    return out.getvalue(), rest


def test_streams_thinking_apart_and_keeps_only_answers(session):
    output, rest = run_loop(session, "What is 2+2?", "What is 2+2?", "/exit", "never read")
    assert f"thinking: {REASONING}\nanswer: {ANSWER}" in output
    assert rest == ["never read"]
    roles = [m["role"] for m in session.messages]
    assert roles == ["user", "assistant", "user", "assistant"]
    assert session.messages[1]["content"] == f"<answer>{ANSWER}</answer>"  # no reasoning kept
    session.messages.append({"role": "user", "content": "third"})
    ids, opened = session.prompt_ids()
    assert opened and REASONING not in decode(session.backend.tokenizer, ids)


def test_reset_think_fold_and_end_of_input(session):
    output, _ = run_loop(session, "What is 2+2?", "/think", "/reset", "/nope", thinking="fold")
    assert "thought for" in output and f"answer: {ANSWER}" in output
    assert output.count(REASONING) == 1  # folded while streaming, printed by /think
    assert "conversation cleared" in output and "unknown command /nope" in output
    assert session.messages == []


def test_ctrl_c_stops_the_reply_and_frees_its_rows(session):
    class Interrupting(Console):
        def print(self, *args, **kwargs):
            if kwargs.get("style") == "dim" and args and args[0] not in ("", "\n"):
                raise KeyboardInterrupt
            super().print(*args, **kwargs)

    out = io.StringIO()
    output, _ = run_loop(session, "What is 2+2?", console=Interrupting(file=out, width=200))
    assert "stopped" in out.getvalue() and session.messages == []
    deadline = time.time() + 5
    while session.scheduler.stats()["live_rows"] and time.time() < deadline:
        time.sleep(0.02)
    assert session.scheduler.stats()["live_rows"] == 0


def test_chat_in_a_pseudo_terminal(model_dir):
    leader, follower = pty.openpty()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "120", "TERM": "xterm"}
    process = subprocess.Popen([sys.executable, "-m", "frugal_r1.cli", "chat", "--model", str(model_dir),
                                "--temperature", "0", "--max-new-tokens", "40"],
                               stdin=follower, stdout=follower, stderr=follower, env=env, close_fds=True)
    os.close(follower)
    seen = b""

    def read_until(marker: bytes, count: int = 1, timeout: float = 60) -> None:
        nonlocal seen
        deadline = time.time() + timeout
        while seen.count(marker) < count:
            assert time.time() < deadline, seen[-500:]
            ready, _, _ = select.select([leader], [], [], 0.1)
            if ready:
                try:
                    seen += os.read(leader, 4096)
                except OSError:
                    break

    try:
        read_until(b"you>")
        os.write(leader, b"What is 2+2?\n")
        read_until(b"answer:")
        read_until(b"you>", count=2)  # the next prompt: the answer has been printed in full
        os.write(leader, b"/exit\n")
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        os.close(leader)
    text = seen.decode(errors="replace")
    assert text.count("\x1b[2m") >= 3  # the thinking arrives dimmed, in several streamed pieces
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    assert f"{REASONING}\r\nanswer: {ANSWER}" in plain
