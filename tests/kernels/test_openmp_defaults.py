"""The kernels' OpenMP defaults (q35f.kernels.fortran): threads for the idle cores only, and
threads that spin only briefly while they wait, unless the user chose otherwise."""

import os
import subprocess
import sys

import pytest

from q35f.kernels import fortran

PROBE = ("import os, q35f.kernels.fortran; print(os.environ.get('OMP_WAIT_POLICY'), "
         "os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_NUM_THREADS'))")


def _after_import(**env_overrides) -> list[str]:
    drop = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(env_overrides)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                         check=True)
    return out.stdout.split()


@pytest.mark.parametrize("cpus, busy, expected", [
    (2, 0.0, 2), (2, 0.4, 2), (2, 0.6, 1), (2, 1.0, 1), (2, 2.0, 1), (2, 7.5, 1),
    (16, 3.2, 13), (1, 0.0, 1), (4, -0.2, 4),
])
def test_threads_are_the_idle_cores_and_at_least_one(cpus, busy, expected):
    assert fortran.default_threads(cpus, busy) == expected


def test_busy_cores_is_a_fraction_of_the_machine():
    busy = fortran.busy_cores(0.02)
    if busy is None:  # no /proc/stat: the defaults are left to libgomp
        assert not os.path.exists("/proc/stat")
    else:
        assert 0.0 <= busy <= os.cpu_count() + 1e-9


def test_defaults_are_set_before_the_kernels_start():
    policy, spin, threads = _after_import()
    assert policy == "None" and int(spin) == fortran.SPIN_COUNT
    assert 1 <= int(threads) <= os.cpu_count()


@pytest.mark.parametrize("overrides, expected", [
    ({"OMP_WAIT_POLICY": "active", "OMP_NUM_THREADS": "3"}, ["active", "None", "3"]),
    ({"GOMP_SPINCOUNT": "100000", "OMP_NUM_THREADS": "1"}, ["None", "100000", "1"]),
])
def test_the_users_choice_is_kept(overrides, expected):
    assert _after_import(**overrides) == expected
