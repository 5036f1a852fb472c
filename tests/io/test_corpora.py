"""Real English text for perplexity: CPython's pydoc topics and Jane Austen via Debian's package."""

import shutil

import pytest

from q35f.io import corpora


def test_pydoc_text_is_real_english_documentation():
    text = corpora.text("pydoc")
    assert len(text) > 200_000
    assert "The \"if\" statement is used for conditional execution" in text
    assert corpora.text("PyDoc") == text  # names are case-insensitive


def test_unknown_corpus_names_the_choices():
    with pytest.raises(ValueError, match="prideprejudice"):
        corpora.text("moby-dick")


def test_aliases_resolve_to_novels():
    assert corpora.canonical_name("sense") == "sensesensibility"
    assert corpora.canonical_name("emma") == "emma"


@pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs Debian's apt-get")
def test_austen_novels_come_from_the_debian_package_and_are_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("Q35F_CACHE", str(tmp_path))
    text = corpora.text("prideprejudice")
    assert text.startswith("PRIDE AND PREJUDICE")
    assert "It is a truth universally acknowledged, that a single man in possession" in text
    assert len(text) > 600_000
    for novel in corpora.AUSTEN:
        assert (tmp_path / "corpora" / f"{novel}.txt").stat().st_size > 400_000
    assert "Emma Woodhouse, handsome, clever, and rich" in corpora.text("emma").replace("\n", " ")
    # cached: no second download
    monkeypatch.setattr(corpora, "fetch_austen", lambda: pytest.fail("fetched twice"))
    assert corpora.text("prideprejudice") == text


def test_missing_apt_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("Q35F_CACHE", str(tmp_path))
    monkeypatch.setattr(corpora.shutil, "which", lambda name: None)
    with pytest.raises(FileNotFoundError, match="apt-get"):
        corpora.text("emma")


def test_a_truncated_database_is_reported(tmp_path):
    rdx = tmp_path / "Rdata.rdx"
    rdx.write_bytes(b"not compressed at all")
    with pytest.raises(ValueError, match="Rdata.rdx"):
        corpora.read_rdata_db(rdx, tmp_path / "Rdata.rdb", ["emma"])


def test_the_generated_calibration_text_is_shipped_large_enough_and_not_an_evaluation_text():
    from q35f.io.checkpoint import default_model_path, open_checkpoint
    from q35f.quantization.recipe import DEFAULT_CALIBRATION, DEFAULT_CALIBRATION_TOKENS

    assert DEFAULT_CALIBRATION == "generated"
    text = corpora.text("generated")
    assert "<|im_start|>assistant" in text  # chat turns in the model's own template
    with open_checkpoint(default_model_path()) as ck:
        tokens = len(ck.tokenizer.encode(text, add_special_tokens=False).ids)
    # the default calibration takes most of it (16,384 of 18,546 tokens since session 9)
    assert tokens >= DEFAULT_CALIBRATION_TOKENS
    pydoc = corpora.text("pydoc")
    passages = [pydoc[i:i + 80] for i in range(0, len(pydoc) - 80, len(pydoc) // 200)]
    assert not any(p in text for p in passages)
