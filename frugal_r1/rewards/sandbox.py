"""Worker processes for verifiers that must not run in the caller: math-verify and reasoning-gym scorers.

math-verify calls sympy, which can run for hours on a hostile answer, and its own timeout uses
`signal.alarm` (main thread only). So those checks run in worker processes, each answer under a
wall-clock deadline that works from any thread; a worker that overruns is killed and replaced. Workers are
forks of one "zygote" that has already imported math-verify and reasoning-gym, so a replacement is ready in
milliseconds; each caps its own memory and CPU time per job. This bounds time and memory; it is not a
security sandbox (see verifiers.py for what is allowed to run here).

`POOL.run(message, timeout, setup=None) -> dict` is the whole interface.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import pickle
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

WORKER_START_TIMEOUT_S = 60.0
GYM_SETUP_TIMEOUT_S = 60.0
WORKER_MEMORY_BYTES = 4 << 30
WORKER_CPU_S_PER_JOB = 5

# --- worker processes -----------------------------------------------------------------------------
# A "zygote" process imports math-verify and reasoning-gym once; each worker is a fork of it (a few
# milliseconds), so replacing a killed worker costs nothing a completion would notice. Parent ↔ worker
# talk over a Unix socket: requests are a 4-byte length + pickle (the parent is trusted), replies a
# 4-byte length + JSON, so a worker can never hand the parent an object to unpickle.

_FRAME = struct.Struct(">I")
_PID = struct.Struct(">i")
_MAX_REPLY_BYTES = 1 << 16
_BOOT = "import sys; from frugal_r1.rewards.sandbox import _zygote_main; _zygote_main(int(sys.argv[1]))"


class _WorkerGone(Exception):
    pass


def _read_exact(fd: int, size: int, deadline: float | None) -> bytes:
    """`size` bytes from `fd`, waiting until `deadline` (time.monotonic(); None: for ever)."""
    chunks: list[bytes] = []
    while size:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
        chunk = os.read(fd, size)
        if not chunk:
            raise _WorkerGone
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _send_frame(sock: socket.socket, data: bytes) -> None:
    sock.sendall(_FRAME.pack(len(data)) + data)


class _Worker:
    """One forked worker, used by one thread at a time."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock
        self.prepared: set[tuple] = set()
        self.alive = True

    def ask(self, message: tuple, timeout: float) -> dict | None:
        """The worker's reply, or None if it overran `timeout` or died (it is then killed)."""
        try:
            _send_frame(self.sock, pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
            deadline = time.monotonic() + timeout
            (size,) = _FRAME.unpack(_read_exact(self.sock.fileno(), _FRAME.size, deadline))
            if size > _MAX_REPLY_BYTES:
                raise _WorkerGone
            reply = json.loads(_read_exact(self.sock.fileno(), size, deadline))
            if not isinstance(reply, dict):
                raise _WorkerGone
            return reply
        except Exception:
            self.kill()
            return None

    def kill(self) -> None:
        self.alive = False
        try:
            os.kill(self.pid, signal.SIGKILL)  # the zygote reaps it
        except OSError:
            pass
        self.sock.close()


class _Zygote:
    """The process workers are forked from."""

    def __init__(self) -> None:
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
        self.control, theirs = socket.socketpair()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT, str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # anything a scorer prints goes nowhere
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # Ctrl-C goes to the parent, which then ends its workers
        )
        theirs.close()
        try:
            if _read_exact(self.control.fileno(), 1, time.monotonic() + WORKER_START_TIMEOUT_S) != b"R":
                raise _WorkerGone
        except Exception:
            self.proc.kill()
            self.control.close()
            raise

    def fork(self) -> _Worker:
        ours, theirs = socket.socketpair()
        try:
            socket.send_fds(self.control, [b"F"], [theirs.fileno()])
        finally:
            theirs.close()
        (pid,) = _PID.unpack(_read_exact(self.control.fileno(), _PID.size, time.monotonic() + 10))
        return _Worker(pid, ours)

    def close(self) -> None:
        self.control.close()  # the zygote exits on EOF; its idle workers exit when their sockets close
        try:
            self.proc.wait(timeout=5)
        except Exception:
            self.proc.kill()


class _Pool:
    """Idle workers, handed to one caller at a time; a killed worker is replaced by a fresh fork."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._zygote: _Zygote | None = None
        self._pid = os.getpid()

    def _take(self) -> _Worker:
        with self._lock:
            if self._pid != os.getpid():  # a forked child must not share its parent's processes
                self._idle, self._zygote, self._pid = [], None, os.getpid()
            if self._idle:
                return self._idle.pop()
            for attempt in range(2):
                if self._zygote is None or self._zygote.proc.poll() is not None:
                    self._zygote = _Zygote()
                try:
                    return self._zygote.fork()
                except Exception:
                    if attempt:
                        raise
                    self._zygote.proc.kill()
                    self._zygote = None
        raise AssertionError("unreachable")

    def _give(self, worker: _Worker) -> None:
        with self._lock:
            if worker.alive and self._pid == os.getpid():
                self._idle.append(worker)
                return
        worker.kill()

    def warm_up(self) -> None:
        self._give(self._take())

    def run(self, message: tuple, timeout: float, setup: tuple[tuple, tuple] | None = None) -> dict:
        """Send `message` to a worker (after `setup`, once per worker) and return its reply;
        `{"error": ...}` if it overran `timeout`, failed or died."""
        try:
            worker = self._take()
        except Exception as error:
            return {"error": f"the verifier worker did not start: {type(error).__name__}: {error}"}
        try:
            if setup is not None and setup[0] not in worker.prepared:
                reply = worker.ask(setup[1], GYM_SETUP_TIMEOUT_S)
                if reply is None or not reply.get("ok"):
                    return {"error": f"worker setup failed: {(reply or {}).get('error', 'timed out')}"}
                worker.prepared.add(setup[0])
            reply = worker.ask(message, timeout)
            return {"error": f"timed out after {timeout:g} s"} if reply is None else reply
        finally:
            self._give(worker)

    def close(self) -> None:
        with self._lock:
            idle, self._idle, zygote, self._zygote = self._idle, [], self._zygote, None
        for worker in idle:
            worker.kill()
        if zygote is not None and self._pid == os.getpid():
            zygote.close()


POOL = _Pool()
atexit.register(POOL.close)


# --- inside the zygote and its workers ------------------------------------------------------------


def _limit_cpu_for_next_job() -> None:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    soft = int(usage.ru_utime + usage.ru_stime) + WORKER_CPU_S_PER_JOB
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


@functools.lru_cache(maxsize=256)
def _parse_math(text: str) -> list:
    from math_verify import parse

    return parse("\\boxed{" + text + "}", parsing_timeout=None) or parse(text, parsing_timeout=None)


def _math_equal(reference: str, answer: str) -> dict:
    from math_verify import verify as math_verify

    expected, got = _parse_math(reference), _parse_math(answer)
    if not got:
        return {"parsed": False, "equal": False}
    return {"parsed": True, "equal": bool(expected) and bool(math_verify(expected, got, timeout_seconds=None))}


def _handle(message: tuple, datasets: dict[tuple, Any]) -> dict:
    kind = message[0]
    if kind == "math":
        return _math_equal(message[1], message[2])
    if kind == "gym_setup":
        import reasoning_gym

        key, spec = message[1], message[2]
        datasets[key] = reasoning_gym.create_dataset(key[0], size=spec["size"], seed=spec["seed"], **spec["config"])
        return {"ok": True}
    if kind == "gym":
        key, answer, entry = message[1], message[2], message[3]
        return {"score": float(datasets[key].score_answer(answer, entry))}
    return {"error": f"unknown request {kind!r}"}


def _serve(sock: socket.socket) -> None:
    """A worker: answer requests on `sock` until it closes."""
    fd = sock.fileno()
    datasets: dict[tuple, Any] = {}
    while True:
        try:
            (size,) = _FRAME.unpack(_read_exact(fd, _FRAME.size, None))
            message = pickle.loads(_read_exact(fd, size, None))
        except (_WorkerGone, OSError):
            return
        _limit_cpu_for_next_job()
        try:
            reply = _handle(message, datasets)
        except BaseException as error:
            reply = {"error": f"{type(error).__name__}: {error}"[:300]}
        _send_frame(sock, json.dumps(reply).encode())


def _zygote_main(control_fd: int) -> None:
    """Import everything once, then fork a worker for each socket the parent sends. Run by `_Zygote`."""
    control = socket.socket(fileno=control_fd)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, resource.getrlimit(resource.RLIMIT_AS)[1]))
    except (ValueError, OSError):
        pass
    logging.disable(logging.CRITICAL)
    import reasoning_gym  # noqa: F401  (imported here so that no job pays for it)

    _math_equal("\\frac{1}{2}", "0.5")  # loads math-verify's LaTeX parser
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # workers are reaped automatically
    control.sendall(b"R")
    while True:
        try:
            _, fds, _, _ = socket.recv_fds(control, 1, 1)
        except OSError:
            return
        if not fds:
            return  # the parent closed the socket
        pid = os.fork()
        if pid == 0:
            control.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            try:
                _serve(socket.socket(fileno=fds[0]))
            finally:
                os._exit(0)
        os.close(fds[0])
        control.sendall(_PID.pack(pid))
