"""Properties of the Fortran sources that the build relies on."""

from pathlib import Path

import pytest

FORTRAN = sorted((Path(__file__).resolve().parents[2] / "fortran").glob("*.f90"))


def test_there_are_fortran_sources():
    assert len(FORTRAN) >= 5


@pytest.mark.parametrize("path", FORTRAN, ids=lambda p: p.name)
def test_fortran_source_is_ascii_and_strict(path):
    text = path.read_bytes()
    # f2py reads sources with the build's locale, which may be ASCII (a UnicodeDecodeError then).
    assert text.isascii(), f"{path.name} has non-ASCII bytes"
    lines = text.decode().splitlines()
    assert all(len(line) <= 100 for line in lines), f"{path.name} has lines over 100 characters"
    units = sum(1 for line in lines if line.strip().lower().startswith(("module ", "program ")))
    units += sum(1 for line in lines if line.startswith("subroutine "))
    assert text.decode().lower().count("implicit none") >= units
