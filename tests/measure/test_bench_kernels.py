"""`q35f bench kernels` on a tiny shape: every row is a real measurement with its baseline and load."""

import math

from q35f.measure import bench_kernels


def test_every_ratio_is_its_baseline_over_its_median():
    rows = bench_kernels.run(shape=(64, 256), group_size=64, runs=1, gemm_rows=8,
                             bandwidth_gib=0.01, reference_rows=8, gemm_shapes=((32, 128),),
                             progress=False)
    timed = [r for r in rows if r["benchmark"] in ("gemv", "gemm_m8")]
    # fp32 + four formats for GEMV and GEMM, plus the extra q35 GEMM shape.
    assert len(timed) == 2 * len(bench_kernels.METHODS) + 1
    for row in timed:
        assert row["median_s"] > 0 and row["baseline_median_s"] > 0
        assert math.isclose(row["speedup_vs_fp32"], row["baseline_median_s"] / row["median_s"])
    assert {r["shape"] for r in timed if r["benchmark"] == "gemm_m8"} == {"64x256", "32x128"}
    for row in rows:
        assert row["load_average"] >= 0


def test_paired_medians_measures_both_functions():
    calls = {"fn": 0, "base": 0}

    def fn():
        calls["fn"] += 1

    def base():
        calls["base"] += 1

    seconds, baseline = bench_kernels.paired_medians(fn, base, runs=3)
    # One warm-up plus three runs of fn; the baseline before and after it, warm-up included.
    assert calls == {"fn": 4, "base": 8}
    assert seconds >= 0 and baseline >= 0


def test_prompt_gemm_rows_compare_four_paths_in_one_run(capsys):
    rows = bench_kernels.run_prompt_gemm(shapes=((32, 128), (48, 200)), rows=9, runs=1,
                                         progress=False)
    assert [r["method"] for r in rows] == ["int8", "dequant", "bf16", "fp32"] * 2
    for row in rows:
        assert row["median_s"] > 0 and row["load_average"] >= 0
        assert math.isclose(row["speedup_vs_fp32"], row["baseline_median_s"] / row["median_s"])
    bench_kernels.print_prompt_gemm(rows)
    assert "48x200" in capsys.readouterr().out
