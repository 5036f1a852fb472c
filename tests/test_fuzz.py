"""The CI-sized fuzz campaign (issue 13): mutated model files, misuse calls, hostile requests.

Each test runs a fixed, seeded slice of what `python bench/fuzz.py` runs at length, and asserts
the targets: no crash, hang, traceback, huge allocation, silent non-finite result, unnamed error,
accepted misuse, array copy or data loss; no 5xx, a model freed within a decode step of a
disconnect. On failure the message lists each cause with an input that reproduces it
(`python bench/fuzz.py --only N --seed S -v`). About two minutes on two cores.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# bench/ on the path only while the harness is imported: it also holds kernels.py, which
# would pass for the `kernels` package that transformers looks for.
BENCH = str(Path(__file__).resolve().parents[1] / "bench")
sys.path.insert(0, BENCH)

from fuzzing import campaign, hostile, seeds  # noqa: E402
from fuzzing.misuse import CASES  # noqa: E402
from fuzzing.sandbox import Sandbox  # noqa: E402
sys.path.remove(BENCH)

CI_SEED = 1
CI_INPUTS = 300
CI_REQUESTS = 150


def _report(tally) -> str:
    lines = [str(tally.figures())]
    for cause, examples in sorted(tally.examples.items()):
        e = examples[0]
        lines.append(f"{cause}\n    input {e.get('input', '-')} ({e.get('kind')}): "
                     f"{e.get('mutation') or e.get('case')}")
    return "\n".join(lines)


def test_the_sandbox_tells_crashes_hangs_and_huge_allocations_apart():
    with Sandbox() as sandbox:
        assert sandbox.run({"task": "probe", "what": "segv"})["outcome"] == "crash"
        assert sandbox.run({"task": "probe", "what": "hang", "timeout": 1})["outcome"] == "hang"
        assert sandbox.run({"task": "probe", "what": "allocate"})["outcome"] == "memory"
        assert sandbox.run({"task": "probe", "what": "print"})["outcome"] == "ok"


def test_every_seed_loads_and_generates(tmp_path):
    """The mutators start from valid models: otherwise every input would fail for one reason."""
    paths = seeds.write_seeds(tmp_path)
    with Sandbox() as sandbox:
        for kind, path in paths.items():
            verdict = sandbox.run({"task": "load", "path": str(path)})
            assert verdict["outcome"] == "ok", (kind, verdict)
            assert len(verdict["tokens"]) >= 1


def test_mutated_inputs_are_refused_by_name_or_loaded_finite(tmp_path):
    tally = campaign.run_inputs(CI_INPUTS, tmp_path, jobs=2, seed=CI_SEED)
    assert tally.tried == CI_INPUTS
    for kind in seeds.SEED_KINDS:  # every format was mutated, and both outcomes occur
        assert sum(tally.by_kind[kind].values()) >= CI_INPUTS // len(seeds.SEED_KINDS) - 1
    assert tally.outcomes["named"] > 0 and tally.outcomes["ok"] > 0
    assert tally.failures == 0, _report(tally)


# Inputs of the long run (`python bench/fuzz.py --inputs 10000 --seed 2026`) that once failed: a
# GGUF string turned into an array with a huge element count (a hang in gguf's parser), index
# entries that are not file names (tracebacks), a non-UTF-8 architecture (an error without the
# file's name).
LONG_RUN_SEED, LONG_RUN_FAILURES = 2026, [3936, 1185, 2529, 5094]


def test_inputs_the_long_run_found_are_refused_by_name(tmp_path):
    tally = campaign.run_inputs(max(LONG_RUN_FAILURES) + 1, tmp_path, jobs=2, seed=LONG_RUN_SEED,
                                only=LONG_RUN_FAILURES)
    assert tally.tried == len(LONG_RUN_FAILURES)
    assert tally.failures == 0 and tally.outcomes["named"] == len(LONG_RUN_FAILURES), \
        _report(tally)


def _handmade(case) -> bool:
    """A QuantizedTensor built by hand from inconsistent tiles (issue 13, item 1)."""
    return case.name.startswith("QuantizedTensor(")


def test_misuse_of_the_api_is_refused_by_name_and_never_crashes():
    assert len(CASES) >= 200
    tally = campaign.run_misuse(jobs=2, select=lambda case: not _handmade(case))
    assert tally.tried == sum(not _handmade(case) for case in CASES) >= 190
    assert tally.failures == 0, _report(tally)


def test_a_hand_built_quantized_tensor_is_checked_before_any_kernel_reads_it():
    tally = campaign.run_misuse(jobs=2, select=_handmade)
    assert tally.tried == sum(map(_handmade, CASES))
    assert tally.failures == 0, _report(tally)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_hostile_requests_get_4xx_and_a_dropped_client_frees_the_model(tmp_path):
    figures = hostile.run_attack(tmp_path, CI_REQUESTS, seed=CI_SEED)
    assert figures["requests"] >= CI_REQUESTS // 2, figures  # the time limit cut it short
    assert hostile.failures(figures) == 0, hostile.format_figures(figures)
