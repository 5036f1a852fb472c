"""Text generation: sampling, streaming detokenization, chat templates; `q35f generate`, `q35f chat`.

The serving engine contract (q35f.serve.server codes against it):

    gen = load_generator(path)            # None = the embedded default model
    gen.model_name, gen.context_length, gen.eos_token_ids
    ids = gen.encode_chat(messages)       # chat template, add_generation_prompt=True
    for event in gen.stream(ids, max_tokens, temperature=1.0, top_p=1.0, seed=None):
        event.token_id, event.text, event.finish_reason   # 'stop' | 'length' | None

A Generator owns one model and one KV cache: use it from one thread at a time. Consecutive calls
whose prompts share a prefix (a chat growing turn by turn) reuse the cached keys and values.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

# Tokens that end a turn in common chat formats; added to the config's EOS ids when in the vocab.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>", "</s>",
                      "<|end|>", "<end_of_turn>")
# top-p first looks at this many most likely tokens (argpartition), and sorts everything only
# when they do not reach the requested mass.
TOP_P_CANDIDATES = 1024


@dataclass(frozen=True)
class TokenEvent:
    token_id: int
    text: str  # newly completed UTF-8 text, may be ''
    finish_reason: str | None = None  # 'stop' (EOS) or 'length', on the last event only


def sample(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    """One token id: argmax at temperature 0, else from softmax(logits / T) cut to top-p mass."""
    if temperature <= 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    z -= z.max()
    p = np.exp(z)
    p /= p.sum()
    ids = None
    if top_p < 1.0:
        k = min(TOP_P_CANDIDATES, p.size)
        ids = np.argpartition(p, p.size - k)[p.size - k:] if k < p.size else np.arange(p.size)
        if p[ids].sum() < top_p:
            ids = np.arange(p.size)
        ids = ids[np.argsort(-p[ids], kind="stable")]
        cumulative = np.cumsum(p[ids])
        keep = int(np.searchsorted(cumulative, top_p)) + 1  # smallest set reaching top_p
        ids = ids[:keep]
        p = p[ids]
    cumulative = np.cumsum(p)
    choice = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
    choice = min(choice, cumulative.size - 1)
    return int(ids[choice]) if ids is not None else choice


class StreamDecoder:
    """Turns a growing list of token ids into text pieces, holding back incomplete UTF-8."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def _decode(self, ids):
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        text = self._decode(self.ids[self.prefix_offset:])
        if len(text) > len(prefix) and not text.endswith("\ufffd"):
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            return text[len(prefix):]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character shows as U+FFFD)."""
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        text = self._decode(self.ids[self.prefix_offset:])
        self.prefix_offset = self.read_offset = len(self.ids)
        return text[len(prefix):] if len(text) > len(prefix) else ""


class Generator:
    def __init__(self, model, tokenizer, chat_template: str | None = None,
                 model_name: str = "model", eos_token_ids=None, special_tokens=None):
        self.model = model
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.model_name = model_name
        self.context_length = int(model.max_seq_len)
        eos = set(eos_token_ids if eos_token_ids is not None else model.config.eos_token_ids)
        for token in END_OF_TURN_TOKENS:
            token_id = tokenizer.token_to_id(token)
            if token_id is not None:
                eos.add(int(token_id))
        self.eos_token_ids: set[int] = eos
        self.special_tokens = dict(special_tokens or {})
        self._cached: list[int] = []  # tokens whose keys/values sit in the KV cache, in order
        self._template = None

    # tokenization

    def encode(self, text: str) -> list[int]:
        """A plain prompt's ids, with BOS if the model's tokenizer adds one (Llama 2/3 do)."""
        return list(self.tokenizer.encode(text, add_special_tokens=True).ids)

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def render_chat(self, messages: list[dict]) -> str:
        if not self.chat_template:
            raise ValueError(f"model {self.model_name} has no chat template; use a plain prompt")
        if self._template is None:
            self._template = _compile_template(self.chat_template)
        return self._template.render(messages=messages, add_generation_prompt=True,
                                     **self.special_tokens)

    def encode_chat(self, messages: list[dict]) -> list[int]:
        """Token ids of `messages` in the model's chat template, ready for the assistant's turn."""
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or "role" not in message or "content" not in message:
                raise ValueError(f"messages[{i}] must be a dict with 'role' and 'content'")
        # the template writes any BOS itself, so the tokenizer adds nothing
        return list(self.tokenizer.encode(self.render_chat(messages), add_special_tokens=False).ids)

    # generation

    def stream(self, prompt_ids, max_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
               seed: int | None = None) -> Iterator[TokenEvent]:
        """Generate up to max_tokens tokens after prompt_ids, one TokenEvent per token."""
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise ValueError("prompt must contain at least one token")
        if len(prompt) >= self.context_length:
            raise ValueError(f"prompt has {len(prompt)} tokens; the context holds "
                             f"{self.context_length}")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {top_p}")
        return self._stream(prompt, int(max_tokens), float(temperature), float(top_p), seed)

    def _stream(self, prompt, max_tokens, temperature, top_p, seed):
        rng = np.random.default_rng(seed)
        logits = self._prefill(prompt)
        decoder = StreamDecoder(self.tokenizer)
        pos = len(prompt)  # position of the token about to be sampled
        for produced in range(1, max_tokens + 1):
            token = sample(logits, temperature, top_p, rng)
            if token in self.eos_token_ids:
                yield TokenEvent(token, decoder.flush(), "stop")
                return
            text = decoder.push(token)
            if produced == max_tokens or pos + 1 >= self.context_length:
                yield TokenEvent(token, text + decoder.flush(), "length")
                return
            yield TokenEvent(token, text)
            logits = self.model.forward([token], pos)
            self._cached.append(token)
            pos += 1

    def _prefill(self, prompt: list[int]) -> np.ndarray:
        """Run the prompt, reusing the cached prefix it shares with the previous call."""
        reuse = 0
        limit = min(len(self._cached), len(prompt) - 1)  # the last prompt token is always run
        while reuse < limit and self._cached[reuse] == prompt[reuse]:
            reuse += 1
        self._cached = self._cached[:reuse]
        logits = self.model.forward(prompt[reuse:], reuse)
        self._cached = list(prompt)
        return logits

    def generate(self, prompt_ids, max_tokens: int, **kwargs) -> tuple[list[int], str]:
        """All at once: (token ids, text)."""
        ids, pieces = [], []
        for event in self.stream(prompt_ids, max_tokens, **kwargs):
            ids.append(event.token_id)
            pieces.append(event.text)
        return ids, "".join(pieces)


def _compile_template(source: str):
    """A Hugging Face chat template, compiled the way transformers does (sandboxed jinja2)."""
    import json

    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False,
                                                                   indent=indent)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(source)


def model_name_of(path) -> str:
    name = Path(str(path)).name
    return name[:-5] if name.endswith(".gguf") else name


def load_generator(path=None, max_seq_len: int | None = None) -> Generator:
    """A Generator for a GGUF file, HF directory or q35f directory (None = embedded default)."""
    from q35f.io.checkpoint import default_model_path
    from q35f.runtime.model import load_model

    path = path if path is not None else default_model_path()
    model, ckpt = load_model(path, max_seq_len=max_seq_len)
    tokenizer = ckpt.tokenizer

    def token_text(token_id):
        return tokenizer.id_to_token(int(token_id)) if token_id is not None else None

    cfg = ckpt.config
    eos_ids = model.config.eos_token_ids
    specials = {"bos_token": token_text(cfg.get("bos_token_id")) or "",
                "eos_token": token_text(eos_ids[0]) if eos_ids else ""}
    return Generator(model, tokenizer, getattr(ckpt, "chat_template", None), model_name_of(path),
                     eos_token_ids=eos_ids, special_tokens=specials)


# --- commands ------------------------------------------------------------------------------------


def _add_sampling_args(parser, max_tokens: int):
    parser.add_argument("model", nargs="?", default=None, metavar="MODEL",
                        help="GGUF file, Hugging Face directory or q35f directory "
                             "(default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("-n", "--max-tokens", type=int, default=max_tokens,
                        help=f"most tokens to generate (default {max_tokens})")
    parser.add_argument("--temperature", type=float, default=0.7,
                        help="sampling temperature; 0 = greedy (default 0.7)")
    parser.add_argument("--top-p", type=float, default=0.9,
                        help="nucleus sampling mass (default 0.9)")
    parser.add_argument("--seed", type=int, default=None, help="random seed for reproducible runs")


def register(subparsers):
    gen = subparsers.add_parser(
        "generate", help="generate text from a prompt, streaming tokens as they come",
        description="Generate text from a prompt with a float or quantized model, streaming "
                    "to stdout; speed goes to stderr.")
    _add_sampling_args(gen, 128)
    gen.add_argument("-p", "--prompt", required=True, help="the prompt text")
    gen.add_argument("--chat", action="store_true",
                     help="wrap the prompt as a user message in the model's chat template")
    gen.set_defaults(func=_generate_command)

    chat = subparsers.add_parser(
        "chat", help="chat interactively with an instruct model",
        description="Interactive chat in the model's chat template; an empty line or Ctrl-D "
                    "ends it, /reset starts over.")
    _add_sampling_args(chat, 512)
    chat.add_argument("--system", default=None, help="a system message")
    chat.set_defaults(func=_chat_command)


def _check_model_arg(model):
    if model is not None and not Path(model).exists():
        raise FileNotFoundError(f"MODEL {model} does not exist")


def _generate_command(args) -> int:
    _check_model_arg(args.model)
    gen = load_generator(args.model)
    if args.chat:
        ids = gen.encode_chat([{"role": "user", "content": args.prompt}])
    else:
        ids = gen.encode(args.prompt)
        sys.stdout.write(args.prompt)
    start = time.perf_counter()
    first = None
    count = 0
    reason = None
    for event in gen.stream(ids, args.max_tokens, args.temperature, args.top_p, args.seed):
        if first is None:
            first = time.perf_counter()
        count += 1
        reason = event.finish_reason
        sys.stdout.write(event.text)
        sys.stdout.flush()
    end = time.perf_counter()
    sys.stdout.write("\n")
    decode = f", {(count - 1) / (end - first):.1f} tok/s decode" if count > 1 else ""
    print(f"[{len(ids)} prompt tokens, {count} generated ({reason}), first token after "
          f"{1000 * (first - start):.0f} ms{decode}]", file=sys.stderr)
    return 0


def _chat_command(args) -> int:
    _check_model_arg(args.model)
    gen = load_generator(args.model)
    if not gen.chat_template:
        raise ValueError(f"model {gen.model_name} has no chat template; use q35f generate")
    system = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(system)
    print(f"{gen.model_name}: empty line or Ctrl-D to quit, /reset to start over", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            break
        if not line.strip():
            break
        if line.strip() == "/reset":
            messages = list(system)
            continue
        messages.append({"role": "user", "content": line})
        ids = gen.encode_chat(messages)
        if len(ids) >= gen.context_length - 1:
            print("[context full: /reset]", file=sys.stderr)
            messages.pop()
            continue
        pieces = []
        budget = min(args.max_tokens, gen.context_length - len(ids))
        for event in gen.stream(ids, budget, args.temperature, args.top_p, args.seed):
            pieces.append(event.text)
            sys.stdout.write(event.text)
            sys.stdout.flush()
        sys.stdout.write("\n")
        messages.append({"role": "assistant", "content": "".join(pieces)})
    return 0
