"""The arXiv supplementary archive: a zip that rebuilds byte for byte from the same inputs.

Reproducible by construction: files in sorted order under one top folder, fixed timestamps
(1980-01-01), fixed permissions, no absolute paths, no caches or build outputs, and a MANIFEST
with the SHA-256 of every file. Refuses to build when the Lean proofs are incomplete
(`sorry`, `admit`, `axiom`, `native_decide` outside comments and strings), when a CSV or figure
is missing, or when the archive would exceed 100 MB.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import zipfile
from pathlib import Path

TOP = "q35f-supplementary"
MAX_BYTES = 100 * 1000 * 1000
CSVS = ("performance", "accuracy", "scalability", "ablation")
FIGURES = ("encoding", "performance", "perplexity_vs_bits", "memory_vs_size")
FIXED_TIME = (1980, 1, 1, 0, 0, 0)
README = "README_supplementary.md"

# What goes in, relative to the repository root: directories walked, single files copied.
INCLUDE_DIRS = ("lean", "fortran", "bench", "python", "docs", "tests", "scripts")
INCLUDE_FILES = ("README.md", "Makefile", "pyproject.toml", "meson.build", "meson.options",
                 "LICENSE", ".gitignore")
EXCLUDE_DIRS = {
    ".git", ".lake", "lake-packages", "build", "builddir", "dist", "__pycache__", ".hypothesis",
    ".pytest_cache", ".mypy_cache", ".ruff_cache", ".venv", "venv", ".ipynb_checkpoints",
}
EXCLUDE_SUFFIXES = (".pyc", ".pyo", ".so", ".o", ".a", ".mod", ".smod", ".olean", ".ilean",
                    ".trace", ".hash", ".c~", "~", ".swp", ".egg-info", ".dylib", ".dll")
FORBIDDEN_LEAN = ("sorry", "admit", "axiom", "native_decide")


def find_root(start: Path) -> Path:
    """The repository root: the nearest folder upwards with a pyproject.toml naming q35f."""
    start = Path(start).resolve()
    for folder in (start, *start.parents):
        project = folder / "pyproject.toml"
        if project.is_file() and re.search(r'^name\s*=\s*"q35f"', project.read_text(), re.M):
            return folder
    raise FileNotFoundError(f"no q35f pyproject.toml in {start} or above (use --root)")


# Lean checks


def strip_lean_comments(text: str) -> str:
    """Lean source with comments (`-- ...`, nested `/- ... -/`) and string literals blanked."""
    out = []
    i, depth, n = 0, 0, len(text)
    while i < n:
        two = text[i:i + 2]
        if depth:
            if two == "/-":
                depth, i = depth + 1, i + 2
            elif two == "-/":
                depth, i = depth - 1, i + 2
            else:
                out.append("\n" if text[i] == "\n" else " ")
                i += 1
        elif two == "/-":
            depth, i = 1, i + 2
        elif two == "--":
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif text[i] == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""')
            i = j + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def lean_problems(lean_dir: Path) -> list[str]:
    """'file:line: word' for every forbidden word in Lean code (not in comments or strings)."""
    pattern = re.compile(r"(?<![\w.'])(" + "|".join(FORBIDDEN_LEAN) + r")(?![\w'])")
    problems = []
    for path in sorted(lean_dir.rglob("*.lean")):
        if _excluded(path.relative_to(lean_dir)):
            continue
        code = strip_lean_comments(path.read_text(encoding="utf-8"))
        for number, line in enumerate(code.splitlines(), 1):
            for match in pattern.finditer(line):
                problems.append(f"{path.relative_to(lean_dir.parent)}:{number}: {match.group(1)}")
    return problems


# collecting files


def _excluded(rel: Path) -> bool:
    if any(part in EXCLUDE_DIRS or part.endswith(".egg-info") for part in rel.parts[:-1]):
        return True
    name = rel.name
    return name in EXCLUDE_DIRS or name.endswith(EXCLUDE_SUFFIXES) or name == ".DS_Store"


def collect(root: Path, results_dir=None, figures_dir=None) -> dict[str, Path]:
    """archive name (POSIX, relative) -> source file, for every file that goes in.

    `results_dir`/`figures_dir` (default bench/results, bench/figures) are packed as
    bench/results and bench/figures, so a run with `--out`/`--figures` elsewhere ships its own
    tables and figures."""
    root = Path(root)
    files: dict[str, Path] = {}
    for folder in INCLUDE_DIRS:
        base = root / folder
        if not base.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDE_DIRS
                                 and not d.endswith(".egg-info"))
            for name in filenames:
                path = Path(dirpath) / name
                rel = path.relative_to(root)
                if path.is_symlink() or not path.is_file() or _excluded(rel):
                    continue
                files[rel.as_posix()] = path
    for name in INCLUDE_FILES:
        if (root / name).is_file():
            files[name] = root / name
    template = root / "supplementary" / README
    if not template.is_file():
        raise FileNotFoundError(f"{template}: the supplementary README template is missing")
    files[README] = template
    for prefix, folder, pattern in (("bench/results/", results_dir, "*.csv"),
                                    ("bench/figures/", figures_dir, "*.*")):
        if folder is None:
            continue
        files = {k: v for k, v in files.items() if not k.startswith(prefix)}
        for path in sorted(Path(folder).glob(pattern)):
            if path.is_file() and not _excluded(Path(path.name)) and not path.name.endswith(".part"):
                files[prefix + path.name] = path
    return files


def check(root: Path, max_bytes: int = MAX_BYTES, results_dir=None, figures_dir=None) -> None:
    """Raise ValueError/FileNotFoundError naming what is missing or wrong."""
    root = Path(root)
    results = Path(results_dir) if results_dir is not None else root / "bench" / "results"
    figs = Path(figures_dir) if figures_dir is not None else root / "bench" / "figures"
    lean = root / "lean"
    if not lean.is_dir() or not any(lean.rglob("*.lean")):
        raise FileNotFoundError(f"{lean}: no Lean sources; the archive must contain the proofs")
    problems = lean_problems(lean)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; ... ({len(problems)} in all)" if len(problems) > 5
                                           else "")
        raise ValueError(f"lean/ is not fully proved, refusing to build: {shown}")
    missing = [str(results / f"{n}.csv") for n in CSVS if not (results / f"{n}.csv").is_file()]
    if missing:
        raise FileNotFoundError(f"missing CSV: {', '.join(missing)} (run `q35f paper data`)")
    missing = [str(figs / f"{n}.{ext}") for n in FIGURES for ext in ("pdf", "png")
               if not (figs / f"{n}.{ext}").is_file()]
    if missing:
        raise FileNotFoundError(f"missing figure: {', '.join(missing)} (run `q35f paper figures`)")


def manifest_text(entries: dict[str, bytes]) -> str:
    lines = [f"{hashlib.sha256(data).hexdigest()}  {TOP}/{name}" for name, data in
             sorted(entries.items())]
    return "\n".join(lines) + "\n"


def _info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(f"{TOP}/{name}", date_time=FIXED_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.create_system = 3  # unix, whatever the host
    info.external_attr = (0o100644 << 16)
    return info


def archive_bytes(root: Path, max_bytes: int = MAX_BYTES, results_dir=None,
                  figures_dir=None) -> tuple[bytes, dict[str, str]]:
    """The zip as bytes and {name: sha256}; raises when a check fails."""
    check(root, max_bytes, results_dir, figures_dir)
    files = collect(root, results_dir, figures_dir)
    raw = sum(p.stat().st_size for p in files.values())
    if raw > 4 * max_bytes:  # even perfect compression would not save it; stop before reading
        raise ValueError(f"the archive inputs are {raw:,} bytes; over the {max_bytes:,}-byte limit")
    entries = {name: path.read_bytes() for name, path in sorted(files.items())}
    entries["MANIFEST.sha256"] = manifest_text(entries).encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name in sorted(entries):
            zf.writestr(_info(name), entries[name], compresslevel=9)
    data = buffer.getvalue()
    if len(data) > max_bytes:
        raise ValueError(f"the archive would be {len(data):,} bytes, over the {max_bytes:,}-byte "
                         "limit; refusing to build")
    digests = {name: hashlib.sha256(blob).hexdigest() for name, blob in entries.items()}
    return data, digests


def build(root: Path, output: Path, max_bytes: int = MAX_BYTES, results_dir=None,
          figures_dir=None) -> tuple[Path, dict[str, str]]:
    """Write the archive to `output` (via a temporary name, then rename)."""
    root, output = Path(root), Path(output)
    if not output.is_absolute():
        output = Path.cwd() / output
    data, digests = archive_bytes(root, max_bytes, results_dir, figures_dir)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, output)
    return output, digests
