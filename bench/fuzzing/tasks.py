"""What a sandboxed child does, and how its Python-level outcome is classified.

Outcomes (the campaign counts each):
    ok         finished, every result finite
    named      refused with an error the CLI prints as one line (ValueError, FileNotFoundError,
               FileExistsError; for API calls ValueError or TypeError) whose single-line
               message names the input (load) or the argument (misuse)
    unnamed    such an error that names neither
    traceback  any other exception: the CLI would print a traceback
    memory     MemoryError: something tried a huge allocation (the child's address space is
               capped at 2 GiB)
    nonfinite  finished, but a result holds NaN or Inf and nothing said so
    accepted   a misuse call that should have been refused returned a result
    refused    a valid edge-case call was refused
crash and hang are decided by the fork server (fuzzing.sandbox).
"""

from __future__ import annotations

import traceback
from pathlib import Path

import numpy as np

# What the CLI prints as one line (q35f.cli.main); the Python API may also raise TypeError.
CLI_ERRORS = (ValueError, FileNotFoundError, FileExistsError)
API_ERRORS = (ValueError, TypeError)
PROMPT = "Hi there"
CHAT = [{"role": "user", "content": "Hi there"}]
DECODE_TOKENS = 4


def preload() -> None:
    """Import everything a task needs once, in the fork server, so children start warm."""
    import gguf  # noqa: F401
    import jinja2.sandbox  # noqa: F401
    import tokenizers  # noqa: F401

    import q35f.io.checkpoint  # noqa: F401
    import q35f.kernels.tensor  # noqa: F401
    import q35f.quantization.convert  # noqa: F401
    import q35f.runtime.generate  # noqa: F401
    import q35f.runtime.model  # noqa: F401
    from fuzzing import misuse  # noqa: F401


def where(err: BaseException) -> str:
    """file:line of the innermost frame, to group failures by their cause."""
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return "?"
    frame = frames[-1]
    return f"{Path(frame.filename).name}:{frame.lineno}"


def classify_error(err: BaseException, must_name: str, expected=CLI_ERRORS) -> dict:
    message = str(err)
    verdict = {"error": f"{type(err).__name__}: {message}"[:500], "where": where(err)}
    if isinstance(err, MemoryError):
        return {"outcome": "memory", **verdict}
    if isinstance(err, RecursionError) or not isinstance(err, expected):
        return {"outcome": "traceback", **verdict}
    named = "\n" not in message.strip() and must_name in message
    return {"outcome": "named" if named else "unnamed", **verdict}


def run(task: dict) -> dict:
    if task["task"] == "load":
        return run_load(task["path"])
    if task["task"] == "misuse":
        return run_misuse(int(task["index"]))
    if task["task"] == "probe":
        return run_probe(task["what"])
    raise ValueError(f"unknown task {task['task']!r}")


def run_load(path: str) -> dict:
    """What `q35f generate MODEL [--chat]` does: load, run the prompt, decode a few tokens."""
    try:
        return _load_and_generate(path)
    except BaseException as err:  # classified, never swallowed: the verdict says what it was
        return classify_error(err, Path(path).name.removesuffix(".gguf"))


def _load_and_generate(path: str) -> dict:
    from q35f.runtime.generate import load_generator

    gen = load_generator(path)
    seen = []  # every logits vector the model produced: were any non-finite?
    forward = gen.model.forward

    def recording_forward(*args, **kwargs):
        logits = forward(*args, **kwargs)
        seen.append(bool(np.isfinite(logits).all()))
        return logits

    gen.model.forward = recording_forward
    ids = gen.encode(PROMPT)
    if gen.chat_template:
        ids = gen.encode_chat(CHAT)
    tokens = [event.token_id for event in gen.stream(ids, DECODE_TOKENS, temperature=0.8,
                                                      top_p=0.9, seed=0)]
    if not all(seen):
        return {"outcome": "nonfinite", "error": f"{seen.count(False)} of {len(seen)} forward "
                "passes gave non-finite logits, and no error", "tokens": tokens}
    return {"outcome": "ok", "tokens": tokens}


def run_misuse(index: int) -> dict:
    from fuzzing.misuse import CASES

    case = CASES[index]
    try:
        result = case.call()
    except BaseException as err:
        verdict = classify_error(err, case.names, API_ERRORS)
        if case.valid:  # a valid call must not be refused, however politely
            verdict["outcome"] = "refused" if verdict["outcome"] in ("named", "unnamed") \
                else verdict["outcome"]
        return {**verdict, "case": case.name}
    if case.valid is False:
        return {"outcome": "accepted", "case": case.name, "error": "returned a result"}
    if isinstance(result, np.ndarray) and result.dtype.kind == "f" \
            and not np.isfinite(result).all():
        return {"outcome": "nonfinite", "case": case.name, "error": "non-finite result"}
    return {"outcome": "ok", "case": case.name}


def run_probe(what: str) -> dict:
    """Misbehave on purpose, so tests can check that the sandbox classifies each way."""
    if what == "segv":
        import ctypes

        ctypes.string_at(0)
    elif what == "hang":
        while True:
            pass
    elif what == "allocate":
        try:
            np.ones(2**31, dtype=np.float32)  # 8 GiB: beyond the 2 GiB cap
        except BaseException as err:
            return classify_error(err, "")
    elif what == "print":  # output of a child must not reach the protocol stream
        print("noise on stdout")
    return {"outcome": "ok"}
