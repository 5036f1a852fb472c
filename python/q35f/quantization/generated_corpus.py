"""Writes the built-in calibration text: what the float model itself writes, sampled once and
shipped in python/q35f/data/ (read by q35f.io.corpora as the corpus "generated").

Why generated text: calibration must never be the evaluation text (Austen, `pydoc`), and a
quantizer fitted to one author's style overfits it (issue 12: calibrated on *Emma*, +16 % on
Pride and Prejudice but +30 % on another author's novel). Text the float model samples is in
no author's style and covers what the model actually puts probability on; sampled from BOS it
is web-like prose, and answers to chat prompts in the model's own chat template match how an
instruct model is used. Text from the machine (licence files, package docs) was not used: it
is one narrow register (legal/technical), and it differs between machines.

    python -m q35f.quantization.generated_corpus            # rewrites python/q35f/data/generated-corpus.txt.gz

Seeded (torch CPU sampling, --seed), batched through transformers' LlamaForCausalLM built from
the embedded GGUF's float32 weights (torch is needed only to regenerate the file, never to use
it). Each sample is stored as the exact text the model saw and wrote (chat markup included) and
the samples are separated by blank lines.
"""

from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path

from q35f.io.corpora import GENERATED_FILE, GENERATED_SEPARATOR


# Many registers, no literary author: the chat half of the corpus answers these.
PROMPTS = (
    "Explain how vaccines train the immune system.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "What are the main causes of inflation?",
    "Write a Python function that checks whether a string is a palindrome, and explain it.",
    "Give me a recipe for a simple vegetable soup.",
    "Summarise the history of the Roman Empire in a few paragraphs.",
    "How does a bicycle stay upright?",
    "Write a polite email asking my landlord to fix the heating.",
    "What is the difference between weather and climate?",
    "Describe the water cycle to a ten-year-old.",
    "Write a poem about the sea at night.",
    "What should I pack for a week of hiking in the mountains?",
    "Explain what a hash table is and when to use one.",
    "Tell me about the life of Marie Curie.",
    "How do I change a flat tyre?",
    "Write a dialogue between a customer and a shop assistant about a broken phone.",
    "What are some tips for sleeping better?",
    "Explain photosynthesis step by step.",
    "Write a news report about a new bridge opening in a small town.",
    "What is the Pythagorean theorem and how is it used?",
    "Give me advice for my first job interview.",
    "How does the stock market work?",
    "Write a letter from a grandmother to her grandson who just moved abroad.",
    "Explain the rules of chess briefly.",
    "What is machine learning?",
    "Describe a busy market in a city you imagine.",
    "How do volcanoes form?",
    "Write a SQL query that finds the ten best-selling products, and explain it.",
    "What are the benefits of learning a second language?",
    "Write a fairy tale about a fox and a crow.",
    "Explain how the internet sends data from one computer to another.",
    "What happened during the French Revolution?",
    "How can a small business attract more customers?",
    "Explain the difference between a virus and a bacterium.",
    "Write a product description for a waterproof backpack.",
    "What is the meaning of the word 'serendipity'? Use it in sentences.",
    "Plan a three-day trip to Japan.",
    "How do airplanes fly?",
    "Write a bash script that backs up a directory, and explain each line.",
    "What are black holes?",
    "Describe how to take care of a houseplant.",
    "Write a speech for a friend's wedding.",
    "What is democracy and how did it begin?",
    "Explain compound interest with an example.",
    "Write a mystery story set on a train.",
    "How does the human heart work?",
    "What are the pros and cons of electric cars?",
    "Translate 'Good morning, how are you?' into French, Spanish and German.",
    "Explain recursion to a beginner programmer.",
    "What is the role of bees in agriculture?",
    "Write a diary entry of a sailor in the eighteenth century.",
    "How do I make a budget for my monthly expenses?",
    "Explain what DNA is.",
    "Write a review of an imaginary restaurant.",
    "Why is the sky blue?",
    "Give me five ideas for a birthday party.",
    "What is the theory of evolution?",
    "Write a JavaScript function that sorts a list of people by age.",
    "How do earthquakes happen?",
    "Describe the plot of a science fiction novel you invent.",
    "What are good habits for studying?",
    "Explain supply and demand.",
    "Write a thank-you note to a teacher.",
    "What is the difference between a simile and a metaphor?",
)


def _hf_model(ck):
    """transformers' LlamaForCausalLM holding the checkpoint's float32 weights."""
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = ck.config
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps",
            "rope_theta", "rope_scaling", "max_position_embeddings", "tie_word_embeddings",
            "bos_token_id", "eos_token_id")
    cfg = LlamaConfig(**{k: config[k] for k in keys if config.get(k) is not None})
    model = LlamaForCausalLM(cfg)
    state = {n: torch.from_numpy(np.ascontiguousarray(ck.get(n))) for n in ck.names()}
    model.load_state_dict(state, strict=False)
    model.tie_weights()
    return model.eval()


def generate(n_chat: int, n_plain: int, max_new_tokens: int, seed: int, temperature: float,
             top_p: float, batch: int) -> list[str]:
    """n_chat answers to PROMPTS (cycled) in the chat template and n_plain samples from BOS."""
    import torch

    from q35f.io.checkpoint import default_model_path, open_checkpoint
    from q35f.runtime.chat_template import compile_template, render

    torch.manual_seed(seed)
    with open_checkpoint(default_model_path()) as ck:
        model = _hf_model(ck)
        tok = ck.tokenizer
        template = compile_template(ck.chat_template)
        bos_id = ck.config["bos_token_id"]
        bos = tok.id_to_token(bos_id)
    prompts = [render(template, messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                      add_generation_prompt=True, bos_token=bos)
               for i in range(n_chat)] + [bos] * n_plain
    pad = tok.token_to_id("<|endoftext|>") or 0
    samples = []
    for first in range(0, len(prompts), batch):
        chunk = [tok.encode(p, add_special_tokens=False).ids for p in prompts[first:first + batch]]
        width = max(map(len, chunk))
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(chunk):  # left padding: every prompt ends where sampling starts
            ids[i, width - len(row):] = torch.tensor(row)
            mask[i, width - len(row):] = 1
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True,
                                 temperature=temperature, top_p=top_p, top_k=0,
                                 max_new_tokens=max_new_tokens, pad_token_id=pad)
        for i, row in enumerate(out.tolist()):
            kept = [t for t, m in zip(row, mask[i].tolist() + [1] * (len(row) - width))
                    if m and t != pad]
            samples.append(tok.decode(kept, skip_special_tokens=False))
        print(f"generated {len(samples)}/{len(prompts)}", file=sys.stderr, flush=True)
    return samples


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m q35f.quantization.generated_corpus", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chat", type=int, default=64, help="samples answering PROMPTS")
    parser.add_argument("--plain", type=int, default=32, help="samples from BOS alone")
    parser.add_argument("--max-new-tokens", type=int, default=192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--out", default=str(Path(__file__).parents[1] / "data" / GENERATED_FILE))
    args = parser.parse_args(argv)
    samples = generate(args.chat, args.plain, args.max_new_tokens, args.seed, args.temperature,
                       args.top_p, args.batch)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(gzip.compress(GENERATED_SEPARATOR.join(samples).encode("utf-8"), mtime=0))
    print(f"wrote {out}: {len(samples)} samples", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
