"""EleutherAI lm-evaluation-harness adapter: the q35f model as harness model `q35f`.

    q35f-lm-eval --model q35f --model_args pretrained=PATH --tasks mmlu --output_path DIR
    python -m q35f.integrations.lm_eval --model q35f ...        (the same, without the console script)

    import q35f.integrations.lm_eval, lm_eval                    (from Python)
    lm_eval.simple_evaluate(model="q35f", model_args="pretrained=PATH", tasks=[...])

lm-eval (0.4.x, checked on 0.4.13) finds models only in its own registry: a plain `lm_eval --model
q35f` cannot see a class from another package (it reads no entry points for models; upstream
issue EleutherAI/lm-evaluation-harness#3282). Importing this module registers `q35f` with
`@register_model`; `q35f-lm-eval` (= `python -m q35f.integrations.lm_eval`) is lm-eval's own command
line, unchanged, run after that import, so every lm-eval option works.

model_args: pretrained=PATH (GGUF file, Hugging Face directory or q35f directory; default the
embedded SmolLM2-135M-Instruct), max_length (tokens of context; default the model's
max_position_embeddings), max_gen_toks (default 256), max_batch_tokens (continuation tokens run
together through the linear layers; default 512), add_bos_token, prefix_token_id.

How requests run on the one KV cache of the numpy/Fortran model (q35f.runtime.model):
- loglikelihood: requests are grouped by context. Each context is run once (only the tokens it
  does not share with the context already in the cache: a few-shot preamble is computed once per
  run of documents that share it); then all distinct continuations of the group (a request
  asked twice is scored once) go through every linear layer together as one (M, K) matrix
  (M >= 8 takes the tiled GEMM kernels), each attending to
  the cached context and to its own earlier tokens only. A continuation longer than
  max_batch_tokens runs on its own after the cached context. The output head is applied only to
  the rows that are scored.
- loglikelihood_rolling: lm-eval's own disjoint windows of max_length tokens (context_len=1, as
  its Hugging Face model does), each scored as above and summed per document.
- generate_until: greedy (or sampled, when the task asks) decoding one token at a time after a
  prompt prefilled with the same cache reuse; stops at the task's `until` strings, an EOS token,
  max_gen_toks or the context end. Requests run one after another (one KV cache).

The harness's own tasks (mmlu, truthfulqa_mc2, humaneval, ...) download their datasets from the
Hugging Face Hub when first run; on a machine without it only local tasks (--include_path) run.
"""

from __future__ import annotations

import logging
import sys

import numpy as np
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

import lm_eval.models  # noqa: F401  (fill the registry with lm-eval's own models first)


log = logging.getLogger(__name__)

DEFAULT_MAX_GEN_TOKS = 256
DEFAULT_MAX_BATCH_TOKENS = 512


# --- forward passes over the model's KV cache ---------------------------------------------------


def prefix_hidden(model, token_ids, start: int) -> np.ndarray:
    """Final-normed hidden states (T, hidden) of token_ids at positions start.., written into the
    KV cache, so later tokens can continue them."""
    return model.hidden_states(token_ids, start)


def branch_hidden(model, start: int, branches: list) -> list[np.ndarray]:
    """Hidden states of several token sequences that each continue the cached positions
    0..start-1, computed in one pass (Model.hidden_states with segments): every linear layer
    multiplies all branch tokens at once, while each token sees the cached prefix and the earlier
    tokens of its own branch only. The KV cache is read, never written. Returns one
    (len(branch), hidden) array per branch."""
    lens = [len(b) for b in branches]
    if not lens or min(lens) < 1:
        raise ValueError("branches must be non-empty token sequences")
    ids = np.concatenate([np.asarray(b, dtype=np.int64) for b in branches])
    segments = np.repeat(np.arange(len(lens)), lens)
    hidden = model.hidden_states(ids, start, segments)
    return np.split(hidden, np.cumsum(lens)[:-1])


def head_scores(model, hidden: np.ndarray, targets, chunk: int = 256):
    """Output head over hidden (R, hidden) in chunks of rows. Returns the float64 log-partition
    of every row, its argmax, the logit of targets[r] (rows with target < 0 get 0), and row 0's
    full logits (float64) for callers that score several tokens there."""
    targets = np.asarray(targets, dtype=np.int64)
    n = hidden.shape[0]
    logz = np.empty(n)
    best = np.empty(n, dtype=np.int64)
    target_logit = np.zeros(n)
    row0 = None
    for a in range(0, n, chunk):
        logits = model.head(np.ascontiguousarray(hidden[a:a + chunk], dtype=np.float32))
        if a == 0:
            row0 = logits[0].astype(np.float64)
        rows = np.arange(logits.shape[0])
        t = targets[a:a + chunk]
        target_logit[a:a + chunk] = np.where(t >= 0, logits[rows, np.maximum(t, 0)], 0.0)
        best[a:a + chunk] = logits.argmax(axis=1)
        top = logits.max(axis=1, keepdims=True)
        logz[a:a + chunk] = np.log(np.exp(logits - top).sum(axis=1, dtype=np.float64)) + top[:, 0]
    return row0, logz, best, target_logit


def _common_prefix(a, b) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


# --- the harness model ---------------------------------------------------------------------------


@register_model("q35f")
class Q35fLM(TemplateLM):
    """A q35f (or float GGUF/Hugging Face) Llama checkpoint run by q35f.runtime.model for lm-eval."""

    def __init__(self, pretrained=None, max_length=None, max_gen_toks=DEFAULT_MAX_GEN_TOKS,
                 max_batch_tokens=DEFAULT_MAX_BATCH_TOKENS, add_bos_token=False,
                 prefix_token_id=None, batch_size=None, max_batch_size=None, device=None,
                 **kwargs):
        super().__init__()
        from pathlib import Path

        from q35f.io.checkpoint import default_model_path, open_checkpoint
        from q35f.runtime.generate import load_generator

        if kwargs:
            log.warning("q35f: ignoring model_args %s", sorted(kwargs))
        if device not in (None, "cpu"):
            log.warning("q35f: runs on the CPU (numpy and Fortran kernels); ignoring device=%s",
                        device)
        if batch_size not in (None, 1, "1", "auto"):
            log.info("q35f: batch_size=%s ignored; continuations of one context are batched up "
                     "to max_batch_tokens=%s", batch_size, max_batch_tokens)
        path = Path(str(pretrained)) if pretrained not in (None, "") else default_model_path()
        if not path.exists():
            raise FileNotFoundError(f"pretrained={path} does not exist")
        if max_length is None:
            with open_checkpoint(path) as ck:
                max_length = int(ck.config.get("max_position_embeddings", 2048))
        self._max_length = int(max_length)
        if self._max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {max_length}")
        self.max_gen_toks = int(max_gen_toks)
        self.max_batch_tokens = int(max_batch_tokens)
        if self.max_gen_toks < 1 or self.max_batch_tokens < 1:
            raise ValueError("max_gen_toks and max_batch_tokens must be at least 1")
        self.add_bos_token = _as_bool(add_bos_token)
        self.pretrained = str(path)

        self.generator = load_generator(path, max_seq_len=self._max_length)
        self.model = self.generator.model
        self.tokenizer = self.generator.tokenizer
        config = self.model.config
        self._eot = int(config.eos_token_ids[0]) if config.eos_token_ids else (
            int(config.bos_token_id) if config.bos_token_id is not None else 0)
        if prefix_token_id is not None:
            self._prefix = int(prefix_token_id)
        else:
            self._prefix = int(config.bos_token_id) if config.bos_token_id is not None \
                else self._eot
        self._cached: list[int] = []  # tokens whose keys/values sit in the KV cache, in order

    # properties the harness reads

    @property
    def eot_token_id(self) -> int:
        return self._eot

    @property
    def prefix_token_id(self) -> int:
        return self._prefix

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def tokenizer_name(self) -> str:
        return self.generator.model_name

    def get_model_info(self) -> dict:
        stats = self.model.stats()
        return {"model_num_parameters": int(stats["params"]),
                "model_bits_per_weight": float(stats["bits_per_weight"]),
                "model_name": self.generator.model_name, "model_path": self.pretrained}

    # tokenization and chat

    def tok_encode(self, string: str, add_special_tokens=None, **kwargs) -> list[int]:
        ids = self.generator.encode(string)
        if self.add_bos_token and self.model.config.bos_token_id is not None and (
                not ids or ids[0] != self.model.config.bos_token_id):
            ids = [int(self.model.config.bos_token_id)] + ids
        return ids

    def tok_decode(self, ids) -> str:
        return self.generator.decode(ids)

    def chat_template(self, chat_template=False):
        if chat_template is False or chat_template is None:
            return None
        return self.generator.chat_template

    def apply_chat_template(self, chat_history, add_generation_prompt: bool = True) -> str:
        if not self.generator.chat_template:
            raise ValueError(f"model {self.generator.model_name} has no chat template; "
                             "run without --apply_chat_template")
        return self.generator.render_chat(chat_history, add_generation_prompt)

    # the KV cache

    def _run_prefix(self, tokens: list[int], first_needed: int) -> tuple[int, np.ndarray]:
        """Make the cache hold `tokens`, rerunning from min(shared prefix, first_needed).
        Returns (first position run, hidden states of the positions run)."""
        start = min(_common_prefix(self._cached, tokens), first_needed, len(tokens))
        self._cached = self._cached[:start]
        if start == len(tokens):
            return start, np.empty((0, self.model.config.hidden_size), dtype=np.float32)
        hidden = prefix_hidden(self.model, tokens[start:], start)
        self._cached = list(tokens)
        return start, hidden

    # loglikelihood

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        """requests: ((context, continuation), context_ids, continuation_ids) triples."""
        L = self.max_length
        items = []
        for i, (_, context_enc, continuation_enc) in enumerate(requests):
            cont = [int(t) for t in continuation_enc]
            if not cont:
                raise ValueError(f"request {i}: the continuation has no tokens")
            if len(cont) > L:
                raise ValueError(f"request {i}: continuation of {len(cont)} tokens does not fit "
                                 f"max_length={L}")
            inp = ([int(t) for t in context_enc] + cont)[-(L + 1):][:-1]
            n_ctx = len(inp) - len(cont) + 1  # input tokens before the first scored position
            items.append((tuple(inp[:n_ctx]), tuple(inp[n_ctx:]), cont, i))
        # Same contexts next to each other; contexts sharing a preamble stay adjacent too.
        items.sort(key=lambda it: (it[0], it[1]))
        groups: list[list] = []
        for it in items:
            if groups and groups[-1][0][0] == it[0]:
                groups[-1].append(it)
            else:
                groups.append([it])

        results: list = [None] * len(requests)
        bar = tqdm(total=len(requests), desc="q35f loglikelihood", disable=disable_tqdm,
                   file=sys.stderr)
        for group in groups:
            # a request asked twice (MC1's choices are MC2's too) is scored once
            unique: dict = {}
            for it in group:
                unique.setdefault((it[1], tuple(it[2])), it)
            answers = dict(zip(unique, self._score_group(list(unique.values()))))
            for _, rest, cont, i in group:
                answer = answers[(rest, tuple(cont))]
                results[i] = answer
                if requests[i][0] is not None and requests[i][0][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
            bar.update(len(group))
        bar.close()
        return results

    def _score_group(self, group) -> list[tuple[float, bool]]:
        """Requests sharing one context: the context once, then the continuations together."""
        context = list(group[0][0])
        n_ctx = len(context)
        # the last context token predicts the first continuation token: always run it
        start, ctx_hidden = self._run_prefix(context, n_ctx - 1)
        last_ctx = ctx_hidden[n_ctx - 1 - start]
        branches = [list(it[1]) for it in group]
        hidden: list = [None] * len(group)
        batch: list[int] = []
        batch_tokens = 0

        def flush():
            nonlocal batch, batch_tokens
            if batch:
                for j, h in zip(batch, branch_hidden(self.model, n_ctx,
                                                     [branches[j] for j in batch])):
                    hidden[j] = h
            batch, batch_tokens = [], 0

        for j, branch in enumerate(branches):
            if not branch:
                continue
            if len(branch) > self.max_batch_tokens:  # too long to batch: run it alone
                hidden[j] = prefix_hidden(self.model, branch, n_ctx)
                self._cached = context  # positions past the context now hold this branch
                continue
            if batch_tokens + len(branch) > self.max_batch_tokens:
                flush()
            batch.append(j)
            batch_tokens += len(branch)
        flush()

        # The output head once over the scored rows of the whole group: row 0 is the last
        # context token (it predicts every continuation's first token), then each branch's rows,
        # each predicting the next token of its own continuation.
        first_row, targets = [], [-1]
        for (_, _, cont, _), h in zip(group, hidden):
            first_row.append(len(targets))
            targets.extend(cont[1:])
        stacked = np.concatenate([last_ctx[None, :]] + [h for h in hidden if h is not None])
        row0, logz, best, target_logit = head_scores(self.model, stacked, targets)
        answers = []
        for j, (_, _, cont, _) in enumerate(group):
            rows = slice(first_row[j], first_row[j] + len(cont) - 1)
            logp = row0[cont[0]] - logz[0] + (target_logit[rows] - logz[rows]).sum()
            greedy = best[0] == cont[0] and bool((best[rows] == np.asarray(cont[1:])).all())
            answers.append((float(logp), bool(greedy)))
        return answers

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, owner = [], []
        for r, (string,) in enumerate(req.args for req in requests):
            for context, continuation in map(make_disjoint_window, get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None, context, continuation))
                owner.append(r)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        totals = [0.0] * len(requests)
        for r, (logp, _) in zip(owner, scores):
            totals[r] += logp
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # generation

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from q35f.runtime.generate import sample

        encoded = [self.tok_encode(req.args[0]) for req in requests]
        order = sorted(range(len(requests)), key=lambda i: encoded[i])  # shared prefixes adjacent
        results: list = [None] * len(requests)
        for i in tqdm(order, desc="q35f generate_until", disable=disable_tqdm, file=sys.stderr):
            context, gen_kwargs = requests[i].args
            kw = dict(gen_kwargs or {})
            until = kw.pop("until", None) or []
            if isinstance(until, str):
                until = [until]
            until = [u for u in until if u]
            max_new = int(kw.pop("max_gen_toks", self.max_gen_toks))
            do_sample = bool(kw.pop("do_sample", False))
            temperature = float(kw.pop("temperature", 1.0 if do_sample else 0.0))
            if not do_sample:
                temperature = 0.0
            top_p = float(kw.pop("top_p", 1.0) or 1.0)
            seed = kw.pop("seed", 1234)
            if kw:
                log.warning("q35f generate_until: ignoring gen_kwargs %s", sorted(kw))
            prompt = encoded[i][-max(1, self.max_length - max_new):]
            text = self._generate(prompt, max_new, until, temperature, top_p, seed, sample)
            results[i] = text
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        return results

    def _generate(self, prompt, max_new, until, temperature, top_p, seed, sample) -> str:
        rng = np.random.default_rng(seed)
        eos = self.generator.eos_token_ids
        start, hidden = self._run_prefix(list(prompt), len(prompt) - 1)
        logits = self.model.head(np.ascontiguousarray(hidden[-1:]))[0]
        out: list[int] = []
        text = ""
        pos = len(prompt)
        while True:
            token = sample(logits, temperature, top_p, rng)
            if token in eos:
                break
            out.append(token)
            text = self.tok_decode(out)
            cut = min((text.find(u) for u in until if u in text), default=-1)
            if cut >= 0:
                return text[:cut]
            if len(out) >= max_new or pos + 1 >= self.max_length:
                break
            logits = self.model.forward([token], pos)
            self._cached.append(token)
            pos += 1
        return text


def _as_bool(value) -> bool:
    if isinstance(value, str):
        if value.lower() in ("1", "true", "yes"):
            return True
        if value.lower() in ("0", "false", "no", ""):
            return False
        raise ValueError(f"expected a boolean, got {value!r}")
    return bool(value)


def main(argv: list[str] | None = None) -> None:
    """`q35f-lm-eval`: lm-eval's command line with the `q35f` model registered."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0]] + list(argv)
    cli_evaluate()


if __name__ == "__main__":
    main()
