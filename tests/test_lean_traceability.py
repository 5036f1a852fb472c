"""Every Lean theorem in lean/ is proven without escape hatches and checked by a named Python test.

Lean cannot be installed on our build machines, so `lake build` does not run in CI here; this
file is what keeps lean/ honest in CI:
* no `sorry`, `admit`, `axiom` or `native_decide` anywhere in lean/**/*.lean (comments too);
* every `theorem` (qualified by its namespace, e.g. `Q35.decode_encode`) has a one-line
  docstring and at least one test in tests/ marked `@pytest.mark.lean("Q35.decode_encode")`;
* every such marker names a theorem that exists, so renaming a theorem without its tests fails;
* the Lake project builds one library, Q35, from a pinned stable toolchain, and Q35.lean imports
  every module (a module left out would not be built at all).
The markers are read with `ast` from the test files' source, not collected by running them.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LEAN = ROOT / "lean"
TESTS = ROOT / "tests"

FORBIDDEN = re.compile(r"sorry|admit|axiom|native_decide")
DECLARATION = re.compile(
    r"^[ \t]*(?:@\[[^\]]*\][ \t]*)?(?:(?:private|protected|noncomputable|nonrec)[ \t]+)*"
    r"theorem[ \t]+([^\s:({\[]+)",
    re.MULTILINE,
)
NAMESPACE = re.compile(r"^[ \t]*(namespace|section|end)\b[ \t]*([^\s]*)", re.MULTILINE)


def lean_files() -> list[Path]:
    return sorted(LEAN.rglob("*.lean"), key=str)


def strip_comments(text: str) -> str:
    """Blank out `--` line comments and (nested) `/- -/` block comments, keeping offsets."""
    out = list(text)
    i, depth, start = 0, 0, 0
    while i < len(text):
        if text.startswith("/-", i):
            if depth == 0:
                start = i
            depth += 1
            i += 2
        elif depth and text.startswith("-/", i):
            depth -= 1
            i += 2
            if depth == 0:
                for j in range(start, i):
                    if out[j] != "\n":
                        out[j] = " "
        elif not depth and text.startswith("--", i):
            end = text.find("\n", i)
            end = len(text) if end < 0 else end
            for j in range(i, end):
                out[j] = " "
            i = end
        else:
            i += 1
    return "".join(out)


def theorems_in(text: str) -> dict[str, int]:
    """Fully qualified theorem names of one Lean file -> offset of their declaration."""
    code = strip_comments(text)
    events = [(m.start(), "decl", m.group(1)) for m in DECLARATION.finditer(code)]
    events += [(m.start(), m.group(1), m.group(2)) for m in NAMESPACE.finditer(code)]
    scopes: list[tuple[str, str]] = []  # (kind, name)
    found: dict[str, int] = {}
    for offset, kind, name in sorted(events):
        if kind == "namespace":
            scopes.append(("namespace", name))
        elif kind == "section":
            scopes.append(("section", name))
        elif kind == "end":
            if scopes:
                scopes.pop()
        else:
            if name.startswith("_root_."):
                qualified = name[len("_root_.") :]
            else:
                prefix = [n for k, n in scopes if k == "namespace"]
                qualified = ".".join([*prefix, name])
            found[qualified] = offset
    return found


def all_theorems() -> dict[str, tuple[Path, int]]:
    result = {}
    for path in lean_files():
        for name, offset in theorems_in(path.read_text(encoding="utf-8")).items():
            assert name not in result, f"theorem {name} declared twice"
            result[name] = (path, offset)
    return result


def _lean_marker_name(node: ast.AST) -> str | None:
    """`pytest.mark.lean("X")` (or `mark.lean("X")`) -> "X"."""
    if not isinstance(node, ast.Call):
        return None
    func = node.func
    if not (isinstance(func, ast.Attribute) and func.attr == "lean"):
        return None
    owner = func.value
    if not (
        (isinstance(owner, ast.Attribute) and owner.attr == "mark")
        or (isinstance(owner, ast.Name) and owner.id == "mark")
    ):
        return None
    if len(node.args) != 1 or not isinstance(node.args[0], ast.Constant):
        raise AssertionError(f"pytest.mark.lean takes one string literal (line {node.lineno})")
    value = node.args[0].value
    if not isinstance(value, str):
        raise AssertionError(f"pytest.mark.lean takes one string literal (line {node.lineno})")
    return value


def markers_in_source(source: str, filename: str = "<test>") -> dict[str, list[str]]:
    """Theorem name -> tests marked with it, from one test file's source."""
    tree = ast.parse(source, filename=filename)
    found: dict[str, list[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for decorator in node.decorator_list:
                name = _lean_marker_name(decorator)
                if name is None:
                    continue
                is_test = node.name.startswith("test") or node.name.startswith("Test")
                assert is_test, f"{filename}: lean marker on {node.name}, which is not a test"
                found.setdefault(name, []).append(f"{filename}::{node.name}")
    return found


def all_markers() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in sorted(TESTS.rglob("test_*.py")):
        source = path.read_text(encoding="utf-8")
        for name, tests in markers_in_source(source, path.name).items():
            found.setdefault(name, []).extend(tests)
    return found


# --- the checks on the real tree ---------------------------------------------------------------


def test_lean_project_exists_and_has_theorems():
    assert (LEAN / "Q35.lean").is_file()
    assert len(lean_files()) >= 2
    assert len(all_theorems()) >= 10


@pytest.mark.parametrize("path", lean_files(), ids=lambda p: str(p.relative_to(LEAN)))
def test_no_escape_hatches(path):
    text = path.read_text(encoding="utf-8")
    hits = [
        f"line {text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}"
        for m in FORBIDDEN.finditer(text)
    ]
    assert not hits, f"{path.relative_to(ROOT)} contains {hits}"


def docstring_before(text: str, offset: int) -> str | None:
    """The `/-- … -/` docstring right before a declaration, or None."""
    before = text[:offset].rstrip()
    if not before.endswith("-/"):
        return None
    start = before.rfind("/--")
    if start < 0 or "-/" in before[start + 3 : -2]:
        return None
    return before[start + 3 : -2]


def test_every_theorem_has_a_one_line_docstring():
    bad = []
    for name, (path, offset) in all_theorems().items():
        doc = docstring_before(path.read_text(encoding="utf-8"), offset)
        if doc is None or "\n" in doc or not doc.strip():
            bad.append(name)
    assert not bad, f"theorems without a one-line /-- docstring -/: {bad}"


def test_every_theorem_is_checked_by_a_marked_test():
    theorems = all_theorems()
    markers = all_markers()
    untested = sorted(set(theorems) - set(markers))
    assert not untested, f"theorems with no @pytest.mark.lean test: {untested}"


def test_every_marker_names_an_existing_theorem():
    theorems = all_theorems()
    unknown = {name: tests for name, tests in all_markers().items() if name not in theorems}
    assert not unknown, f"markers naming no theorem in lean/: {unknown}"


def test_every_theorem_has_a_kernel_test():
    """Besides the z3 checks, each theorem is compared with the shipped kernels."""
    source = (TESTS / "kernels" / "test_lean_kernels.py").read_text(encoding="utf-8")
    kernel_markers = markers_in_source(source, "test_lean_kernels.py")
    missing = sorted(set(all_theorems()) - set(kernel_markers))
    assert not missing, f"theorems with no test in test_lean_kernels.py: {missing}"


def test_lake_project_builds_one_library_from_a_pinned_release():
    toolchain = (LEAN / "lean-toolchain").read_text(encoding="utf-8").strip()
    assert re.fullmatch(r"leanprover/lean4:v\d+\.\d+\.\d+", toolchain), toolchain
    lakefile = (LEAN / "lakefile.toml").read_text(encoding="utf-8")
    assert re.findall(r'^\[\[lean_lib\]\]\s*\nname\s*=\s*"Q35"', lakefile, re.MULTILINE)
    assert lakefile.count("[[lean_lib]]") == 1
    assert "require" not in lakefile, "core Lean only: no dependencies (no Mathlib)"


def test_root_module_imports_every_module():
    imports = set(re.findall(r"^import\s+(\S+)", (LEAN / "Q35.lean").read_text(), re.MULTILINE))
    modules = {
        "Q35." + ".".join(p.relative_to(LEAN / "Q35").with_suffix("").parts)
        for p in (LEAN / "Q35").rglob("*.lean")
    }
    assert modules and modules == imports
    for path in (LEAN / "Q35").rglob("*.lean"):
        for module in re.findall(r"^import\s+(\S+)", path.read_text(), re.MULTILINE):
            assert module.startswith("Q35.") or module in {"Init"}, f"{path}: import {module}"


def test_readme_lists_every_theorem():
    readme = (LEAN / "README.md").read_text(encoding="utf-8")
    missing = [name for name in all_theorems() if f"`{name}`" not in readme]
    assert not missing, f"lean/README.md does not list {missing}"
    assert "not compiled" in readme.lower()


# --- the checker checks itself -----------------------------------------------------------------


def test_parser_qualifies_names_by_namespace():
    text = (
        "/-- a -/\ntheorem top : True := trivial\n"
        "namespace A\n/-- b -/\ntheorem one (x : Nat) : x = x := rfl\n"
        "namespace B\n-- theorem commented_out : True := trivial\n"
        "/- theorem in_block : True := trivial -/\n"
        "protected theorem two : True := trivial\nend B\n"
        "section S\ntheorem three : True := trivial\nend S\n"
        "theorem _root_.four : True := trivial\nend A\n"
    )
    assert set(theorems_in(text)) == {"top", "A.one", "A.B.two", "A.three", "four"}


def test_checker_flags_escape_hatches():
    for word in ("sorry", "admit", "axiom", "native_decide"):
        assert FORBIDDEN.search(f"theorem t : 1 = 1 := by {word}")
        assert FORBIDDEN.search(f"-- a comment that says {word}")


def test_marker_parser_reads_decorators():
    source = (
        "import pytest\n"
        "@pytest.mark.lean('Q35.x')\n@pytest.mark.slow\ndef test_a(): pass\n"
        "class TestB:\n    @pytest.mark.lean('Q35.y')\n    def test_c(self): pass\n"
    )
    assert markers_in_source(source) == {"Q35.x": ["<test>::test_a"], "Q35.y": ["<test>::test_c"]}
    with pytest.raises(AssertionError):
        markers_in_source("import pytest\n@pytest.mark.lean('Q35.x')\ndef helper(): pass\n")


def test_renaming_a_theorem_breaks_the_trace():
    """A theorem renamed in Lean but not in its test is both untested and a dangling marker."""
    theorems = set(theorems_in("namespace Q35\n/-- d -/\ntheorem renamed : True := trivial\nend Q35"))
    markers = set(markers_in_source("import pytest\n@pytest.mark.lean('Q35.old')\ndef test_t(): pass"))
    assert theorems - markers == {"Q35.renamed"}
    assert markers - theorems == {"Q35.old"}


def test_docstring_check_wants_one_line_right_before_the_theorem():
    text = "/-- one line -/\ntheorem a : True := trivial\n"
    assert docstring_before(text, text.index("theorem")) == " one line "
    text = "/-- two\nlines -/\ntheorem a : True := trivial\n"
    assert "\n" in docstring_before(text, text.index("theorem"))
    text = "/-- doc of d -/\ndef d := 1\ntheorem a : True := trivial\n"
    assert docstring_before(text, text.index("theorem")) is None
