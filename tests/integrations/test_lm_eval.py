"""The lm-evaluation-harness adapter, driven through the harness itself on tiny local tasks.

The tasks (tests/data/lm_eval/*.yaml) read small JSON files: multiple choice (loglikelihood),
a rolling-loglikelihood perplexity task and a generate_until task. The harness's numbers are
checked against q35f's own forward pass, perplexity code and greedy generator.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # the tasks read local files only
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lm_eval  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

from conftest import tiny_tokenizer  # noqa: E402
from q35f.integrations import lm_eval as lm_eval_adapter  # noqa: E402
from q35f.io.llama import expected_shapes  # noqa: E402
from q35f.quantization.convert import quantize_checkpoint  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data" / "lm_eval"
TASKS = ["q35f_tiny_mc", "q35f_tiny_ppl", "q35f_tiny_gen"]
MAX_LENGTH = 48  # short, so the perplexity documents span several rolling windows

CONFIG = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 256,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_position_embeddings": 256,
    "tie_word_embeddings": True,
    "bos_token_id": 0,
    "eos_token_id": 0,
}


def write_tiny_llama(directory: Path) -> Path:
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(CONFIG))
    tiny_tokenizer().save(str(directory / "tokenizer.json"))
    rng = np.random.default_rng(7)
    weights = {}
    for name, shape in expected_shapes(CONFIG).items():
        if name.endswith("norm.weight"):
            weights[name] = np.ones(shape, dtype=np.float32)
        else:
            weights[name] = (0.3 * rng.standard_normal(shape)).astype(np.float32)
    save_file(weights, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


@pytest.fixture(scope="module")
def q35_dir(tmp_path_factory):
    """A tiny random Llama quantized to q35 (group 32): its linears run on the Fortran kernels."""
    root = tmp_path_factory.mktemp("lm_eval_models")
    src = write_tiny_llama(root / "fp32")
    out = root / "q35"
    quantize_checkpoint(src, out, bits="q35", group_size=32, progress=False)
    return out


@pytest.fixture(scope="module")
def lm(q35_dir):
    return lm_eval_adapter.Q35fLM(pretrained=str(q35_dir), max_length=MAX_LENGTH,
                                  max_batch_tokens=64)


@pytest.fixture(scope="module")
def evaluated(lm):
    """All three tasks through lm_eval.simple_evaluate, with per-document samples."""
    cwd = os.getcwd()
    os.chdir(DATA)  # the YAMLs name their JSON files relative to this folder
    try:
        return lm_eval.simple_evaluate(model=lm, tasks=TASKS,
                                       task_manager=local_tasks(),
                                       log_samples=True, verbosity="WARNING")
    finally:
        os.chdir(cwd)


def local_tasks() -> TaskManager:
    """Only the tasks in tests/data/lm_eval (indexing the harness's own thousands takes ~15 s)."""
    return TaskManager(include_path=str(DATA), include_defaults=False)


def direct_loglikelihood(model, context_ids, continuation_ids) -> tuple[float, bool]:
    """log p(continuation | context) from one fresh Model.forward over all logits; like the
    harness's Hugging Face model, only the last max_length + 1 tokens are kept."""
    ids = (list(context_ids) + list(continuation_ids))[-(model.max_seq_len + 1):]
    logits = model.forward(ids[:-1], 0, all_logits=True).astype(np.float64)
    scored = logits[len(ids) - len(continuation_ids) - 1:]
    logz = np.log(np.exp(scored - scored.max(1, keepdims=True)).sum(1)) + scored.max(1)
    targets = np.asarray(continuation_ids)
    logp = scored[np.arange(len(targets)), targets] - logz
    return float(logp.sum()), bool((scored.argmax(1) == targets).all())


def test_q35f_is_a_registered_harness_model():
    from lm_eval.api.registry import get_model

    assert get_model("q35f") is lm_eval_adapter.Q35fLM
    assert issubclass(lm_eval_adapter.Q35fLM, lm_eval.api.model.LM)


def test_batched_continuations_equal_separate_forward_passes(lm):
    """Branches run together (M = 23 rows: the GEMM kernels) see only the cached context and
    their own tokens: each equals running context + branch alone through Model.forward."""
    model = lm.model
    rng = np.random.default_rng(0)
    context = rng.integers(1, 256, 9).tolist()
    branches = [rng.integers(1, 256, n).tolist() for n in (1, 5, 9, 8)]
    lm._cached = []  # the adapter's record of the cache; we overwrite the cache here
    lm_eval_adapter.prefix_hidden(model, context, 0)
    hidden = lm_eval_adapter.branch_hidden(model, len(context), branches)
    for branch, h in zip(branches, hidden):
        assert h.shape == (len(branch), CONFIG["hidden_size"])
        expect = model.forward(context + branch, 0, all_logits=True)[len(context):]
        np.testing.assert_allclose(model.head(h), expect, rtol=1e-4, atol=1e-4)


def test_multiple_choice_scores_equal_direct_forward(lm, evaluated):
    samples = evaluated["samples"]["q35f_tiny_mc"]
    docs = json.loads((DATA / "mc.json").read_text())
    assert len(samples) == len(docs)
    correct = 0
    for sample in samples:
        doc = sample["doc"]
        context = lm.tok_encode(f"Question: {doc['question']}\nAnswer:")
        lls = []
        for choice, resp in zip(doc["choices"], sample["resps"]):
            continuation = lm.tok_encode(" " + choice)
            want_ll, want_greedy = direct_loglikelihood(lm.model, context, continuation)
            got_ll, got_greedy = resp[0]
            assert got_ll == pytest.approx(want_ll, rel=1e-5, abs=1e-3)
            assert got_greedy == want_greedy
            lls.append(want_ll)
        assert len(lls) == len(doc["choices"])
        correct += int(np.argmax(lls) == doc["answer"])
    acc = evaluated["results"]["q35f_tiny_mc"]["acc,none"]
    assert acc == pytest.approx(correct / len(docs))


def rolling_windows(tokens, prefix, length):
    """The harness's windows with context_len=1: the tokens are predicted in consecutive chunks
    of `length`, each from a fresh cache holding the `length` tokens of [prefix] + tokens just
    before each chunk's last target (so only the last, shorter chunk sees earlier tokens).
    Yields (context, targets): context ends with the token that predicts targets[0]."""
    seq = [prefix] + list(tokens)
    for first in range(0, len(tokens), length):
        end = min(first + length, len(tokens))  # targets are seq[first + 1:end + 1]
        inputs = seq[max(0, end - length):end]
        yield inputs[:len(inputs) - (end - first) + 1], seq[first + 1:end + 1]


def perplexity_loglikelihood(model, context, targets) -> float:
    """log p(targets | context) from q35f.measure.perplexity: a window scores every token but its first,
    so the window context + targets minus the window context leaves the targets."""
    from q35f.measure.perplexity import perplexity

    def scored_logp(window):
        if len(window) < 2:
            return 0.0
        r = perplexity(model, window, ctx=len(window))
        assert r["windows"] == 1 and r["tokens"] == len(window) - 1
        return -r["nll"] * r["tokens"]

    return scored_logp(list(context) + list(targets)) - scored_logp(list(context))


def test_rolling_loglikelihood_equals_q35f_perplexity(lm, q35_dir, evaluated):
    """The harness's perplexity task on q35f equals q35f's own perplexity code on the same
    windows: each harness window (max_length tokens in, one fresh cache) is a perplexity window."""
    from q35f.runtime.model import load_model

    model, _ = load_model(q35_dir, max_seq_len=MAX_LENGTH + 1)
    samples = evaluated["samples"]["q35f_tiny_ppl"]
    texts = [d["text"] for d in json.loads((DATA / "ppl.json").read_text())]
    assert [s["doc"]["text"] for s in samples] == texts
    totals = []
    for sample, text in zip(samples, texts):
        tokens = lm.tok_encode(text)
        windows = list(rolling_windows(tokens, lm.prefix_token_id, MAX_LENGTH))
        assert sum(len(t) for _, t in windows) == len(tokens)  # every token scored once
        if len(tokens) <= MAX_LENGTH:  # one window: q35f perplexity over [prefix] + tokens
            assert len(windows) == 1
        else:
            assert len(windows) >= 3  # rolls over several windows, the last one partial
        want = sum(perplexity_loglikelihood(model, c, t) for c, t in windows)
        got = sample["resps"][0][0]
        got = got[0] if isinstance(got, (list, tuple)) else got
        assert got == pytest.approx(want, rel=1e-5, abs=1e-3)
        totals.append(got)
    # the harness's word perplexity is exp(-sum loglikelihood / words) over the documents
    words = sum(len(t.split()) for t in texts)
    ppl = evaluated["results"]["q35f_tiny_ppl"]["word_perplexity,none"]
    assert ppl == pytest.approx(np.exp(-sum(totals) / words), rel=1e-6)


def test_generate_until_equals_greedy_generator(lm, evaluated):
    from q35f.runtime.generate import load_generator

    generator = load_generator(lm.pretrained, max_seq_len=MAX_LENGTH)
    samples = evaluated["samples"]["q35f_tiny_gen"]
    assert len(samples) == 2
    for sample in samples:
        prompt = generator.encode(sample["doc"]["prompt"])
        _, text = generator.generate(prompt, 6, temperature=0.0)
        want = text.split("\n")[0]
        got = sample["resps"][0][0]
        assert got == want
        assert "\n" not in got


def test_generation_stops_at_the_first_until_string(lm):
    """With `until` taken from the middle of the greedy output, the answer is the text before
    its first occurrence; without it, max_gen_toks tokens."""
    from types import SimpleNamespace

    prompt = "Q: name a colour.\nA:"
    (free,) = lm.generate_until([SimpleNamespace(args=(prompt, {"until": [], "max_gen_toks": 8}))],
                                disable_tqdm=True)
    ids = lm.tok_encode(free)
    assert len(ids) >= 4  # the random byte model rarely emits its EOS (byte 0)
    stop = lm.tok_decode(ids[2:4])
    (cut,) = lm.generate_until([SimpleNamespace(args=(prompt, {"until": [stop, "never"],
                                                              "max_gen_toks": 8}))],
                               disable_tqdm=True)
    assert cut == free[:free.index(stop)]


def test_context_is_computed_once_per_group(lm, monkeypatch):
    """Four choices of one question cost one prefix pass over the context; a second question
    with the same preamble reruns only the tokens after the shared part."""
    calls = []
    real = lm_eval_adapter.prefix_hidden

    def counting(model, token_ids, start):
        calls.append((len(token_ids), start))
        return real(model, token_ids, start)

    monkeypatch.setattr(lm_eval_adapter, "prefix_hidden", counting)
    lm._cached = []
    preamble = lm.tok_encode("The following are questions.\n")
    first = preamble + lm.tok_encode("Q: one?\nA:")
    second = preamble + lm.tok_encode("Q: two?\nA:")
    requests = [((None, None), ctx, lm.tok_encode(c)) for ctx in (first, second)
                for c in (" yes", " no", " maybe", " x")]
    scores = lm._loglikelihood_tokens(requests, disable_tqdm=True)
    shared = len(preamble) + len("Q: ")  # one token per byte
    assert calls == [(len(first), 0), (len(second) - shared, shared)]
    for (_, ctx, cont), (ll, greedy) in zip(requests, scores):
        want_ll, want_greedy = direct_loglikelihood(lm.model, ctx, cont)
        assert ll == pytest.approx(want_ll, rel=1e-5, abs=1e-3)
        assert greedy == want_greedy


def test_bad_model_args_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="pretrained="):
        lm_eval_adapter.Q35fLM(pretrained=str(tmp_path / "missing"))


def test_embedded_smollm2_answers_multiple_choice_like_its_own_forward_pass():
    """The real default model (SmolLM2-135M-Instruct GGUF, its BPE tokenizer) through the
    harness: scores equal a fresh forward pass over the harness's own token split."""
    model_lm = lm_eval_adapter.Q35fLM(max_length=128)
    cwd = os.getcwd()
    os.chdir(DATA)
    try:
        out = lm_eval.simple_evaluate(model=model_lm, tasks=["q35f_tiny_mc"], limit=1,
                                      task_manager=local_tasks(), log_samples=True,
                                      verbosity="WARNING")
    finally:
        os.chdir(cwd)
    samples = out["samples"]["q35f_tiny_mc"]
    assert len(samples) == 1 and len(samples[0]["resps"]) == 4  # one question, four choices
    for sample in samples:
        for args, resp in zip(sample["arguments"], sample["resps"]):
            context, continuation = args[0], args[1]
            assert continuation.startswith(" ")  # the choice follows "Answer:" after a space
            ctx_ids, cont_ids = model_lm._encode_pair(context, continuation)
            want = direct_loglikelihood(model_lm.model, ctx_ids, cont_ids)
            assert resp[0][0] == pytest.approx(want[0], rel=1e-5, abs=1e-3)
            assert resp[0][1] == want[1]
    assert 0.0 <= out["results"]["q35f_tiny_mc"]["acc,none"] <= 1.0


@pytest.mark.slow
def test_cli_runs_a_q35_model_and_writes_results(q35_dir, tmp_path):
    """`python -m q35f.integrations.lm_eval` is lm-eval's CLI with q35f registered: it runs the local
    tasks on a q35 directory and writes the harness's result JSON."""
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "q35f.integrations.lm_eval", "--model", "q35f",
         "--model_args", f"pretrained={q35_dir},max_length={MAX_LENGTH}",
         "--tasks", "q35f_tiny_mc,q35f_tiny_ppl", "--include_path", str(DATA),
         "--output_path", str(out)],
        cwd=DATA, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = list(out.rglob("results_*.json"))
    assert len(files) == 1
    doc = json.loads(files[0].read_text())
    assert doc["config"]["model"] == "q35f"
    args = doc["config"]["model_args"]  # a dict in lm-eval 0.4.13, a string in older ones
    assert (args["pretrained"] if isinstance(args, dict) else args) in (
        str(q35_dir), f"pretrained={q35_dir},max_length={MAX_LENGTH}")
    assert 0.0 <= doc["results"]["q35f_tiny_mc"]["acc,none"] <= 1.0
    assert doc["results"]["q35f_tiny_ppl"]["word_perplexity,none"] > 1.0
    assert "q35f_tiny_mc" in proc.stdout


# --- stock lm-eval: its own `hf` model on the same q35f directory -------------------------------


@pytest.fixture(scope="module")
def hf_lm(q35_dir):
    """The harness's Hugging Face model, made as `--model hf --model_args ...` makes it: it loads
    the q35f directory with AutoModelForCausalLM and the directory's remote code."""
    from lm_eval.api.registry import get_model

    return get_model("hf").create_from_arg_string(
        f"pretrained={q35_dir},trust_remote_code=True,max_length={MAX_LENGTH}",
        {"batch_size": 1, "device": "cpu"})


@pytest.fixture(scope="module")
def hf_evaluated(hf_lm):
    cwd = os.getcwd()
    os.chdir(DATA)
    try:
        return lm_eval.simple_evaluate(model=hf_lm, tasks=TASKS, task_manager=local_tasks(),
                                       log_samples=True, verbosity="WARNING")
    finally:
        os.chdir(cwd)


def test_stock_hf_model_runs_q35f_modules(hf_lm):
    from q35f.integrations.transformers import Q35fEmbedding, Q35fLinear

    model = hf_lm.model
    attn = model.model.layers[0].self_attn
    assert isinstance(attn.q_proj, Q35fLinear) and attn.q_proj.quantized.bits == "q35"
    assert isinstance(model.model.embed_tokens, Q35fEmbedding)
    assert model.model.embed_tokens.quantized.bits == "int8"
    assert model.lm_head.quantized is model.model.embed_tokens.quantized  # tied, one table


def _flat(resps):
    for r in resps:
        yield from (_flat(r) if isinstance(r, (list, tuple)) else [r])


def test_stock_hf_model_agrees_with_the_q35f_adapter(evaluated, hf_evaluated):
    """Every per-document answer of the three tasks (log-likelihoods, greedy flags, rolling
    perplexity sums, generated text) and every metric equal the q35f adapter's."""
    for task in TASKS:
        ours = sorted(evaluated["samples"][task], key=lambda s: s["doc_id"])
        stock = sorted(hf_evaluated["samples"][task], key=lambda s: s["doc_id"])
        assert [s["doc"] for s in stock] == [s["doc"] for s in ours]
        for a, b in zip(ours, stock):
            assert b["arguments"] == a["arguments"]
            want, got = list(_flat(a["resps"])), list(_flat(b["resps"]))
            assert len(got) == len(want) > 0
            for w, g in zip(want, got):
                if isinstance(w, float):
                    assert g == pytest.approx(w, rel=1e-5, abs=1e-3), task
                else:
                    assert g == w, task
        for metric, value in evaluated["results"][task].items():
            if isinstance(value, float) and not metric.endswith("_stderr,none"):
                assert hf_evaluated["results"][task][metric] == pytest.approx(value, rel=1e-5)


@pytest.mark.slow
def test_stock_lm_eval_cli_runs_a_q35f_directory(q35_dir, evaluated, tmp_path):
    """The unmodified harness's command line, `lm_eval --model hf`, on a q35f directory."""
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
         f"pretrained={q35_dir},trust_remote_code=True,max_length={MAX_LENGTH}",
         "--tasks", "q35f_tiny_mc,q35f_tiny_ppl", "--include_path", str(DATA), "--device", "cpu",
         "--output_path", str(out)],
        cwd=DATA, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (file,) = out.rglob("results_*.json")
    results = json.loads(file.read_text())["results"]
    assert results["q35f_tiny_mc"]["acc,none"] == evaluated["results"]["q35f_tiny_mc"]["acc,none"]
    assert results["q35f_tiny_ppl"]["word_perplexity,none"] == pytest.approx(
        evaluated["results"]["q35f_tiny_ppl"]["word_perplexity,none"], rel=1e-5)
