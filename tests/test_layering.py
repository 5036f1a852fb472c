"""The package's folders state the flow of data; a module imports only from its own stage or from
stages upstream of it (q35f/__init__.py lists them). This test fails on an import downstream."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "q35f"
STAGES = ["format", "kernels", "io", "runtime", "quantization", "measure", "serve",
          "integrations", "paper", "cli"]
# The root: its lazy public names (q35f.quantize, ...) and __version__ are upstream of everything;
# the compiled extension q35f._kernels belongs to the kernels stage.
ROOT_NAMES = {"__version__": "format", "_kernels": "kernels"}


def stage_of_module(parts: list[str]) -> str | None:
    """Stage of q35f.<parts...> (None for the root package itself)."""
    return parts[0] if parts and parts[0] in STAGES else None


def imported_stages(path: Path):
    """(line, stage) of every q35f module that the file at `path` imports."""
    rel = path.relative_to(PACKAGE).with_suffix("").parts
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name.split(".") for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing module's package
                base = list(rel[:-node.level]) if node.level <= len(rel) else []
                module = base + (node.module.split(".") if node.module else [])
                targets = [["q35f", *module, a.name] for a in node.names]
            elif node.module and node.module.split(".")[0] == "q35f":
                targets = [node.module.split(".") + [a.name] for a in node.names]
        for target in targets:
            if target[0] != "q35f":
                continue
            if len(target) >= 2 and target[1] in ROOT_NAMES:
                yield node.lineno, ROOT_NAMES[target[1]]
            else:
                stage = stage_of_module(target[1:])
                if stage is not None:
                    yield node.lineno, stage


def test_every_module_belongs_to_a_stage():
    loose = [p.name for p in PACKAGE.glob("*.py")
             if p.stem not in ("__init__", "__main__", "cli")]
    assert loose == [], f"modules outside the stage folders: {loose}"
    # data/ holds package data (the built-in calibration corpus), no code
    folders = sorted(p.name for p in PACKAGE.iterdir()
                     if p.is_dir() and p.name not in ("__pycache__", "data"))
    assert folders == sorted(s for s in STAGES if s != "cli")
    assert not list((PACKAGE / "data").glob("*.py"))


def test_every_stage_says_its_job():
    for stage in STAGES[:-1]:
        doc = ast.get_docstring(ast.parse((PACKAGE / stage / "__init__.py").read_text()))
        assert doc and len(doc) > 40, f"q35f/{stage}/__init__.py needs a docstring saying its job"


def test_no_module_imports_downstream():
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] in ("__init__.py", "__main__.py", "cli.py"):
            continue  # the facade and the command line sit above everything
        own = STAGES.index(rel.parts[0])
        for line, stage in imported_stages(path):
            if STAGES.index(stage) > own:
                bad.append(f"{rel}:{line} imports from q35f.{stage} (downstream of {rel.parts[0]})")
    assert bad == [], "\n".join(bad)


def test_the_checker_sees_a_downstream_import(tmp_path, monkeypatch):
    # The test above must not pass vacuously: a planted downstream import is found.
    fake = tmp_path / "q35f"
    (fake / "format").mkdir(parents=True)
    (fake / "format" / "bad.py").write_text("from q35f.runtime.model import Model\n"
                                            "from ..serve import server\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    found = list(imported_stages(fake / "format" / "bad.py"))
    assert [s for _, s in found] == ["runtime", "serve"]
