"""The format's numbers are typed in two languages: q35f.format.spec (Python) and
fortran/q35_blocks.f90. This test reads the Fortran source and checks that both say the same."""

from __future__ import annotations

import re
from pathlib import Path

from q35f.format.spec import BLOCK_WEIGHTS, FORMATS
from q35f.kernels.fortran import TILE_ROWS

BLOCKS = Path(__file__).resolve().parents[2] / "fortran" / "q35_blocks.f90"


def fortran_parameters(source: str) -> dict[str, int]:
    """name -> value of every scalar `integer, parameter :: a = 1, b = 2` declaration."""
    found = {}
    for line in re.findall(r"integer, parameter :: ([^!\n]+)", source):
        for name, value in re.findall(r"(\w+) = (\d+)\b(?!\s*\*)", line):
            found[name] = int(value)
    return found


def select_case(source: str, function: str) -> dict[str, int]:
    """case label -> value of a `select case (fmt)` function returning one integer per format."""
    body = re.search(rf"function {function}\(fmt\)(.*?)end function {function}", source, re.S)
    assert body, f"{function} not found in {BLOCKS.name}"
    cases = {}
    for labels, value in re.findall(r"case \(([\w, ]+)\); \w+ = (\d+)", body.group(1)):
        for label in labels.split(","):
            cases[label.strip()] = int(value)
    default = re.search(r"case default; \w+ = (\d+)", body.group(1))
    if default:
        cases["default"] = int(default.group(1))
    return cases


def test_format_ids_agree():
    params = fortran_parameters(BLOCKS.read_text())
    assert {name: params[f"format_{name}"] for name in FORMATS} == \
        {name: bits.format_id for name, bits in FORMATS.items()}


def test_block_and_tile_sizes_agree():
    params = fortran_parameters(BLOCKS.read_text())
    assert params["block_weights"] == BLOCK_WEIGHTS
    assert params["tile_rows"] == TILE_ROWS


def test_block_bytes_and_grids_agree():
    source = BLOCKS.read_text()
    block_bytes = select_case(source, "block_bytes")
    top_level = select_case(source, "top_level")
    for name, bits in FORMATS.items():
        label = f"format_{name}"
        assert block_bytes.get(label, block_bytes.get("default")) == bits.block_bytes, name
        assert top_level.get(label, top_level.get("default")) == bits.even_levels - 1, name
