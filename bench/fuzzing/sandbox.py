"""The fork server: one long-lived process that forks a child per task.

The server imports numpy, the kernels, the loaders and the tokenizer library once; each child
inherits them, caps its address space (RLIMIT_AS), sends its stdout/stderr to a log file, runs
one task from `fuzzing.tasks` and writes a JSON verdict to a pipe. The server waits at most the
task's timeout, then kills the child. So a segfault, a hang or a runaway allocation costs one
child, never the campaign; what the child never reported is classified here:

    crash    the child died from a signal (or exited without a verdict)
    hang     no verdict within the timeout (the child is killed)

Protocol: one JSON task per line on stdin, one JSON verdict per line on stdout.
The server is started with one BLAS/OpenMP thread, so forking it is safe.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
MEMORY_CAP_BYTES = 2 * 1024**3
TIMEOUT_S = 10.0
LOG_TAIL_BYTES = 4000


def _run_child(task: dict, write_fd: int, log_path: str) -> None:
    """In the forked child: never returns."""
    import resource

    from fuzzing import tasks

    try:
        cap = int(task.get("memory_cap", MEMORY_CAP_BYTES))
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(log, 1)
        os.dup2(log, 2)
        verdict = tasks.run(task)
    except BaseException as err:  # the task runner itself failed: report it, do not hide it
        verdict = {"outcome": "traceback", "error": f"harness: {type(err).__name__}: {err}"[:500]}
    try:
        os.write(write_fd, json.dumps(verdict).encode())
    finally:
        os._exit(0)


def run_one(task: dict) -> dict:
    """Run `task` in a forked child; the verdict, with the process-level outcomes filled in."""
    timeout = float(task.get("timeout", TIMEOUT_S))
    log_path = f"/tmp/q35f-fuzz-{os.getpid()}.log"
    read_fd, write_fd = os.pipe()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _run_child(task, write_fd, log_path)
    os.close(write_fd)
    chunks, timed_out = [], False
    deadline = started + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        ready, _, _ = select.select([read_fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(read_fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    if timed_out:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    os.close(read_fd)
    seconds = time.monotonic() - started
    log = _tail(log_path)
    if timed_out:
        verdict = {"outcome": "hang", "error": f"no verdict after {timeout:g} s (killed)"}
    elif os.WIFSIGNALED(status):
        name = signal.Signals(os.WTERMSIG(status)).name
        verdict = {"outcome": "crash", "error": f"killed by {name}", "log": log}
    else:
        try:
            verdict = json.loads(b"".join(chunks))
        except ValueError:
            verdict = {"outcome": "crash", "error": f"exit status {os.WEXITSTATUS(status)}, "
                       "no verdict", "log": log}
    if "copied an array" in log or "created an array" in log:
        verdict = {**verdict, "copy": True}
    verdict["seconds"] = round(seconds, 4)
    return verdict


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - LOG_TAIL_BYTES))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass


def serve() -> None:
    """The server loop: preload, then one task per line until stdin closes."""
    from fuzzing import tasks

    tasks.preload()
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing but verdicts on the protocol stream
    for line in sys.stdin:
        if not line.strip():
            continue
        verdict = run_one(json.loads(line))
        out.write(json.dumps(verdict) + "\n")
        out.flush()


class Sandbox:
    """A fork server subprocess, driven from the campaign (one task at a time)."""

    def __init__(self):
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join([str(BENCH), os.environ.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from fuzzing.sandbox import serve; serve()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def run(self, task: dict) -> dict:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the fork server exited with {self.proc.returncode}")
        self.proc.stdin.write(json.dumps(task) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the fork server died (status {self.proc.wait()})")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
