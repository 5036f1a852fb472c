"""The ablation of the default recipe: its variants, the rows it cannot measure (with the reason
and the command), and how a rerun of one half keeps the other half's rows."""

from __future__ import annotations

from types import SimpleNamespace

from q35f.paper import data
from q35f.quantization.calibrate import DEFAULT_SEQUENCE_LENGTH
from q35f.quantization.recipe import DEFAULT_CALIBRATION_TOKENS


def test_recipe_variants_cover_the_issue_factors():
    variants = data.recipe_variants(quick=False)
    default = DEFAULT_CALIBRATION_TOKENS // DEFAULT_SEQUENCE_LENGTH
    assert variants[0]["sequences"] == default and variants[0]["options"] == {}
    static = next(v for v in variants if v["factor"] == "scaling")
    assert static["group_size"] == 1536  # >= every K of the embedded model: one group per row
    assert next(v for v in variants if v["factor"] == "grid")["options"] == {"symmetric": True}
    assert [v["sequences"] for v in variants if v["factor"] == "calibration"] == [128, 512, 1024]
    assert len(data.recipe_variants(quick=True)) == 1


def test_recipe_command_names_every_changed_option():
    static, symmetric = data.recipe_variants(quick=False)[1:3]
    assert data.recipe_command(static, None) == (
        "q35f quantize -o OUT --group-size 1536 --calibration-tokens 16384")
    assert "symmetric=True" in data.recipe_command(symmetric, "big.txt.gz")
    assert "--calibration big.txt.gz" in data.recipe_command(symmetric, "big.txt.gz")


class _Tokenizer:
    """Words as tokens, at most 1000: no text holds 64 sequences of 128."""

    def encode(self, text, add_special_tokens=False):
        return SimpleNamespace(ids=text.split()[:1000])


def test_rows_the_calibration_text_cannot_hold_stay_empty_with_reason(tmp_path, monkeypatch):
    import q35f.quantization.convert as convert

    def refuse(*a, **k):
        raise AssertionError("nothing may be quantized: every row exceeds the text")

    monkeypatch.setattr(convert, "quantize_checkpoint", refuse)
    text = tmp_path / "calib.txt"
    text.write_text("word " * 1000)  # 1000 tokens < 64 sequences of 128
    common = {"corpus": "prideprejudice", "windows": 6, "ctx": 512, "command": "q35f paper data"}
    rows = data._recipe_rows("model", SimpleNamespace(tokenizer=_Tokenizer()), False, tmp_path,
                             str(text), score=None, common=common, model_name="tiny")
    assert len(rows) == len(data.recipe_variants(quick=False))
    for row, var in zip(rows, data.recipe_variants(quick=False)):
        assert row.get("perplexity") is None and row.get("kl_divergence") is None
        assert row["source"] == "not measured"
        assert row["note"].startswith("not measured: the built-in generated corpus holds 1000 ")
        assert f"; {text} holds 1000 tokens (7 sequences of 128)" in row["note"]
        assert f"--ablation-only '{var['variant']}' --ablation-calibration" in row["note"]
        assert row["command"] == "q35f paper data"


def test_only_the_named_variants_run(tmp_path, monkeypatch):
    import q35f.quantization.convert as convert

    monkeypatch.setattr(convert, "quantize_checkpoint", lambda *a, **k: 1 / 0)
    common = {"corpus": "c", "windows": 1, "ctx": 512, "command": "x"}
    rows = data._recipe_rows("model", SimpleNamespace(tokenizer=_Tokenizer()), False, tmp_path,
                             None, None, common, "tiny", only=("1024 calibration sequences",))
    assert [r["variant"] for r in rows] == ["1024 calibration sequences"]


def test_a_partial_rerun_replaces_only_its_own_rows():
    rtn = data.RECIPE_LABEL["rtn"]
    old = [{"recipe": data.REFERENCE_RECIPE, "factor": "reference", "perplexity": "1"},
           {"recipe": rtn, "factor": "group_size", "variant": "group size 64", "perplexity": "2"},
           {"recipe": rtn, "factor": "baseline", "variant": "dynamic asymmetric per-group, 4 "
            "bits on even weight", "perplexity": "3"}]
    new = [{"recipe": data.REFERENCE_RECIPE, "factor": "reference", "perplexity": 1.5},
           {"recipe": rtn, "factor": "group_size", "variant": "group size 64", "perplexity": 9}]
    rows = data.merge_ablation(old, new)
    assert [r["perplexity"] for r in rows] == [1.5, "3", 9]  # canonical order, one reference


def test_a_rerun_of_one_half_keeps_the_other_half():
    old = [{"factor": "reference", "perplexity": "21.6"},
           {"factor": "baseline", "variant": "rtn baseline", "perplexity": "104"},
           {"recipe": data.RECIPE_LABEL["recipe"], "factor": "baseline", "variant": "old"}]
    new = [{"recipe": data.REFERENCE_RECIPE, "factor": "reference", "perplexity": 21.6},
           {"recipe": data.RECIPE_LABEL["recipe"], "factor": "baseline", "variant": "new"}]
    rows = data.merge_ablation(old, new)
    assert [r.get("variant") for r in rows] == [None, "rtn baseline", "old", "new"]
    assert rows[1]["recipe"] == data.RECIPE_LABEL["rtn"]  # session 1's rows had no column
    assert rows[1]["command"] == "q35f paper data"
