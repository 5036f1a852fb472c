"""The quality sweep's CSV handling (q35f.measure.quality)."""

import csv

import pytest

from q35f.measure import quality


def test_config_spec_parses_typed_options():
    name, kwargs = quality._parse_config("g:recipe=calibrated,damping=0.05,calibration_tokens=64")
    assert name == "g"
    assert kwargs["gptq"] is True and kwargs["damping"] == 0.05
    assert kwargs["calibration_tokens"] == 64


def test_widen_adds_new_columns_and_keeps_old_rows(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text("config,ppl,note\nrtn,111.4,old\n")
    quality._widen(path, ["config", "ppl", "kl_divergence", "note"])
    rows = list(csv.DictReader(open(path)))
    assert rows == [{"config": "rtn", "ppl": "111.4", "kl_divergence": "", "note": "old"}]
    before = path.read_text()
    quality._widen(path, ["config", "ppl", "kl_divergence", "note"])  # nothing to add: untouched
    assert path.read_text() == before


def test_widen_refuses_a_file_of_another_tool(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text("config,tokens_per_s\nx,3\n")
    with pytest.raises(ValueError, match="unknown columns"):
        quality._widen(path, ["config", "ppl"])
    assert path.read_text() == "config,tokens_per_s\nx,3\n"
