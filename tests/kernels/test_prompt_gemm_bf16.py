"""The bf16 prompt GEMM (q35f.kernels.torch_matmul): Fortran-dequantized bands multiplied by
torch in bfloat16, against a float64 product of the dequantized matrix, within the bound of
bf16 rounding; and how the prompt GEMM is chosen."""

import numpy as np
import pytest
from conftest import BITS, weight_matrices
from hypothesis import given
from hypothesis import strategies as st

import q35f
from q35f.kernels import tensor, torch_matmul
from q35f.runtime import model as runtime_model

U_BF16 = 2.0**-8  # unit roundoff of bfloat16 (8 significant bits, round to nearest even)
EPS32 = 2.0**-24


def _check(x, qt):
    y = q35f.matmul(x, qt)
    dequantized = qt.dequantize().astype(np.float64)
    exact = x.astype(np.float64) @ dequantized.T
    # x and w each rounded (2u + u^2 of every product's size), float32 sums of K products
    # (K * 2^-24 of the sum of sizes), the result rounded to bf16 (u of |y| <= the same sum).
    k = qt.shape[1]
    magnitude = np.abs(x.astype(np.float64)) @ np.abs(dequantized).T
    bound = (3 * U_BF16 + 4 * U_BF16**2 + 1.1 * k * EPS32) * magnitude + 2.0**-120 * k
    assert y.dtype == np.float32 and y.shape == exact.shape
    assert np.all(np.abs(y - exact) <= bound)


@pytest.mark.parametrize("bits", BITS)
@given(data=weight_matrices(), m=st.sampled_from([tensor.GEMM_MIN_ROWS, 9, 33, 64]),
       seed=st.integers(0, 999))
def test_bf16_gemm_is_within_bf16_rounding_of_the_dequantized_product(bits, data, m, seed,
                                                                       monkeypatch):
    monkeypatch.setenv(tensor.PROMPT_GEMM_ENV, "bf16")
    w, group_size = data
    qt = q35f.quantize(w, group_size, bits)
    _check(np.random.default_rng(seed).standard_normal((m, w.shape[1])).astype(np.float32), qt)


def test_bf16_gemm_writes_every_band(monkeypatch):
    monkeypatch.setenv(tensor.PROMPT_GEMM_ENV, "bf16")
    monkeypatch.setattr(tensor, "GEMM_BUFFER_FLOATS", 16 * 200)  # one 16-row tile per band
    qt = q35f.quantize(np.random.default_rng(0).standard_normal((75, 200)).astype(np.float32), 64)
    _check(np.random.default_rng(1).standard_normal((20, 200)).astype(np.float32), qt)


def test_prompt_gemm_defaults_to_bf16_only_with_hardware_and_torch(monkeypatch):
    monkeypatch.delenv(tensor.PROMPT_GEMM_ENV, raising=False)
    for hardware, has_torch, expected in [(True, True, "bf16"), (False, True, "float32"),
                                          (True, False, "float32")]:
        torch_matmul.default_on.cache_clear()
        monkeypatch.setattr(torch_matmul, "hardware_bf16", lambda h=hardware: h)
        monkeypatch.setattr(torch_matmul, "_torch", lambda t=has_torch: object() if t else None)
        assert tensor.prompt_gemm() == expected
    torch_matmul.default_on.cache_clear()


def test_prompt_gemm_setting_is_checked(monkeypatch):
    for name in tensor.PROMPT_GEMMS:
        monkeypatch.setenv(tensor.PROMPT_GEMM_ENV, name)
        assert tensor.prompt_gemm() == name
    monkeypatch.setenv(tensor.PROMPT_GEMM_ENV, "fp16")
    with pytest.raises(ValueError, match="Q35F_PROMPT_GEMM must be one of"):
        tensor.prompt_gemm()


def test_bf16_without_torch_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch_matmul, "_torch", lambda: None)
    monkeypatch.setenv(tensor.PROMPT_GEMM_ENV, "bf16")
    qt = q35f.quantize(np.ones((2, 16), np.float32), 16)
    with pytest.raises(RuntimeError, match="needs torch"):
        q35f.matmul(np.ones((tensor.GEMM_MIN_ROWS, 16), np.float32), qt)


def test_cpu_flags_name_bf16_hardware_when_present():
    flags = torch_matmul.cpu_flags()
    assert torch_matmul.hardware_bf16() == any(f in flags for f in torch_matmul.BF16_CPU_FLAGS)


@given(t=st.integers(1, 40), groups=st.sampled_from([(2, 1), (4, 2), (3, 3)]),
       seed=st.integers(0, 999))
def test_attention_through_torch_equals_numpy(t, groups, seed):
    """Prompts under the bf16 setting multiply attention in torch float32: the same function."""
    n_heads, n_kv = groups
    rng = np.random.default_rng(seed)
    d, s = 8, t + 5
    q = rng.standard_normal((t, n_heads, d)).astype(np.float32)
    keys = rng.standard_normal((n_kv, s, d)).astype(np.float32)
    values = rng.standard_normal((n_kv, s, d)).astype(np.float32)
    mask = runtime_model.visible_mask(np.tril(np.ones((t, t), dtype=bool)))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(tensor.PROMPT_GEMM_ENV, "float32")
        numpy_out = runtime_model.attention(q, keys, values, mask, 0.35)
        mp.setenv(tensor.PROMPT_GEMM_ENV, "bf16")
        torch_out = runtime_model.attention(q, keys, values, mask, 0.35)
    np.testing.assert_allclose(torch_out, numpy_out, rtol=1e-5, atol=1e-5)
