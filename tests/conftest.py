"""Shared hypothesis strategies and fixtures for the kernel tests."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

settings.register_profile(
    "q35f",
    deadline=None,
    max_examples=60,
    # no_array_copies checks once after all examples of a test, which is what we want.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture],
)
settings.load_profile("q35f")

BITS = ["q35", "int8", "int4", "int3"]

# Values that stress float16 parameters: subnormal, tiny, huge, and exactly representable ones.
EDGE_VALUES = [0.0, -0.0, 6e-8, -6e-8, 1e-5, 65504.0, -65504.0, 65000.0, 1.0, -1.0, 0.5]


@st.composite
def weight_matrices(draw, max_rows=40, max_cols=300):
    """(w, group_size): random shapes incl. ragged K, N = 1, constant groups and edge values."""
    rows = draw(st.integers(1, max_rows))
    cols = draw(st.integers(1, max_cols))
    group_size = draw(st.sampled_from([16, 32, 48, 64, 128, 256]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["normal", "scaled", "constant", "edges", "outliers"]))
    if kind == "normal":
        w = rng.standard_normal((rows, cols))
    elif kind == "scaled":
        w = rng.standard_normal((rows, cols)) * 10.0 ** draw(st.integers(-7, 4))
    elif kind == "constant":
        w = np.full((rows, cols), draw(st.floats(-1000, 1000, width=32)))
    elif kind == "edges":
        w = rng.choice(EDGE_VALUES, size=(rows, cols))
    else:
        w = rng.standard_normal((rows, cols)) * 0.02
        mask = rng.random((rows, cols)) < 0.01
        w[mask] = rng.choice([-30.0, 30.0], size=mask.sum())
    return w.astype(np.float32), group_size


@pytest.fixture
def no_array_copies(capfd):
    """Fail if f2py copied an array (the extension is built with F2PY_REPORT_ON_ARRAY_COPY)."""
    yield
    err = capfd.readouterr().err
    assert "copied an array" not in err and "created an array" not in err, err
