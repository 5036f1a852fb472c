"""Run the campaign and tally it: mutated inputs and misuse calls through fork servers.

Input i of a run with seed s is mutated with numpy's default_rng([s, i]), so `--only i` rebuilds
exactly that input (the reproducer). Each input is hashed before and after it is loaded: a loader
that writes to its input is "data lost".
"""

from __future__ import annotations

import hashlib
import shutil
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fuzzing import mutate, seeds
from fuzzing.sandbox import Sandbox

# Outcomes that are failures of q35f (the target is zero of each).
FAILURES = ("crash", "hang", "traceback", "memory", "nonfinite", "unnamed", "accepted", "refused",
            "copy", "data_lost")
EXAMPLES_PER_CAUSE = 3


@dataclass
class Tally:
    tried: int = 0
    outcomes: Counter = field(default_factory=Counter)
    by_kind: dict = field(default_factory=lambda: defaultdict(Counter))
    examples: dict = field(default_factory=lambda: defaultdict(list))  # cause -> verdicts
    seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, kind: str, verdict: dict) -> None:
        outcomes = [verdict["outcome"]] + [f for f in ("copy", "data_lost") if verdict.get(f)]
        with self.lock:
            self.tried += 1
            for outcome in outcomes:
                self.outcomes[outcome] += 1
                self.by_kind[kind][outcome] += 1
                if outcome in FAILURES:
                    cause = f"{outcome} {verdict.get('where', '')} {_gist(verdict)}"
                    if len(self.examples[cause]) < EXAMPLES_PER_CAUSE:
                        self.examples[cause].append({"kind": kind, **verdict})

    @property
    def failures(self) -> int:
        return sum(self.outcomes[f] for f in FAILURES)

    def figures(self) -> dict:
        return {"tried": self.tried, **{k: self.outcomes[k] for k in
                ("ok", "named", *FAILURES)}, "seconds": round(self.seconds, 1)}


def _gist(verdict: dict) -> str:
    """The error with numbers and paths stripped, so one cause groups its many inputs."""
    import re

    text = verdict.get("error", "")
    text = re.sub(r"/\S+", "PATH", text)
    text = re.sub(r"\d+", "N", text)
    return text[:90]


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        h.update(file.name.encode())
        h.update(file.read_bytes())
    return h.hexdigest()


def _parallel(jobs: int, items, work) -> None:
    """Run work(sandbox, item) over items with `jobs` fork servers."""
    items = iter(items)
    lock = threading.Lock()
    errors = []

    def worker():
        with Sandbox() as sandbox:
            while True:
                with lock:
                    item = next(items, None)
                if item is None:
                    return
                try:
                    work(sandbox, item)
                except BaseException as err:  # a harness failure: stop and report it
                    errors.append(err)
                    return

    threads = [threading.Thread(target=worker) for _ in range(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def run_inputs(n: int, work_dir: Path, jobs: int = 2, seed: int = 0, timeout: float = 10.0,
               only: list[int] | None = None, keep: Path | None = None,
               log=None) -> Tally:
    """Mutate and load `n` inputs (or just the indices `only`); keep failing inputs in `keep`."""
    work_dir = Path(work_dir)
    seed_paths = seeds.write_seeds(work_dir / "seeds")
    kinds = sorted(seed_paths)
    tally = Tally()
    started = time.monotonic()

    def work(sandbox, index):
        rng = np.random.default_rng([seed, index])
        kind = kinds[index % len(kinds)]
        target = work_dir / f"in-{index:06d}"
        if seed_paths[kind].suffix == ".gguf":
            target = target.with_suffix(".gguf")
        description = mutate.mutate(rng, seed_paths[kind], target)
        before = _digest(target)
        verdict = sandbox.run({"task": "load", "path": str(target), "timeout": timeout})
        verdict.update(input=index, mutation=description)
        if _digest(target) != before:
            verdict["data_lost"] = True
        tally.add(kind, verdict)
        failed = verdict["outcome"] in FAILURES or verdict.get("data_lost")
        if failed and keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            kept = keep / target.name
            if not kept.exists() and len(list(keep.iterdir())) < 200:
                (shutil.copytree if target.is_dir() else shutil.copyfile)(target, kept)
        if log is not None and failed:
            log(f"input {index} ({kind}) {verdict['outcome']}: {description} -> "
                f"{verdict.get('error', '')[:160]}")
        _remove(target)

    _parallel(jobs, only if only is not None else range(n), work)
    tally.seconds = time.monotonic() - started
    return tally


def run_misuse(jobs: int = 2, timeout: float = 20.0, log=None, select=None) -> Tally:
    """Every misuse call (or those whose Case passes `select`)."""
    from fuzzing.misuse import CASES

    tally = Tally()
    started = time.monotonic()

    def work(sandbox, index):
        verdict = sandbox.run({"task": "misuse", "index": index, "timeout": timeout})
        verdict.setdefault("case", CASES[index].name)
        tally.add("misuse", verdict)
        if log is not None and (verdict["outcome"] in FAILURES or verdict.get("copy")):
            log(f"misuse {verdict['case']}: {verdict['outcome']}"
                f"{' (array copied)' if verdict.get('copy') else ''} "
                f"{verdict.get('error', '')[:160]}")

    indices = [i for i, case in enumerate(CASES) if select is None or select(case)]
    _parallel(jobs, indices, work)
    tally.seconds = time.monotonic() - started
    return tally


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()
