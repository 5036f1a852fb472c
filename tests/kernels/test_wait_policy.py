"""The kernels' OpenMP threads sleep while they wait unless the user chose otherwise
(q35f.kernels.fortran: spinning threads collapse decode on a busy machine)."""

import os
import subprocess
import sys

import pytest

PROBE = "import os, q35f.kernels.fortran; print(os.environ.get('OMP_WAIT_POLICY'))"


def _policy_after_import(**env_overrides) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(env_overrides)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


def test_default_wait_policy_is_passive():
    assert _policy_after_import() == "passive"


@pytest.mark.parametrize("overrides, expected", [
    ({"OMP_WAIT_POLICY": "active"}, "active"),
    ({"GOMP_SPINCOUNT": "100000"}, "None"),
])
def test_a_chosen_wait_policy_is_kept(overrides, expected):
    assert _policy_after_import(**overrides) == expected
