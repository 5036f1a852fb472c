"""Peak memory of `q35f quantize` on a synthetic many-layer checkpoint.

Builds a Llama-shaped Hugging Face checkpoint (random weights, bfloat16 by default, several
safetensors shards with an index) in a temporary directory, then runs two fresh interpreters:
one that only imports q35f and opens the checkpoint (the baseline), one that quantizes it. Both
report their peak resident set size (VmHWM). Streaming quantization means the difference
stays near the largest tensor however many layers there are; loading the model whole would make
it grow with the total size.

    .venv/bin/python bench/quantize_memory.py                 # 24 layers, ~300M weights, ~600 MB
    .venv/bin/python bench/quantize_memory.py --layers 48 --json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

MIB = 1024 * 1024


def llama_config(layers, hidden, intermediate, heads, kv_heads, vocab):
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "vocab_size": vocab,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "bfloat16",
    }


def build_checkpoint(directory: Path, config: dict, shards: int, dtype: str = "bf16", seed=0):
    """Write the checkpoint shard by shard (only one shard's tensors in memory at a time)."""
    import ml_dtypes
    from safetensors.numpy import save_file

    from q35f.io.llama import expected_shapes

    np_dtype = {"bf16": ml_dtypes.bfloat16, "f16": np.float16, "f32": np.float32}[dtype]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    shapes = expected_shapes(config)
    names = list(shapes)
    rng = np.random.default_rng(seed)
    weight_map = {}
    total = 0
    for s in range(shards):
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {}
        for name in names[s::shards]:
            shape = shapes[name]
            w = rng.standard_normal(shape, dtype=np.float32) * 0.02
            part[name] = (1.0 + w if len(shape) == 1 else w).astype(np_dtype)
            total += part[name].nbytes
        save_file(part, str(directory / file), metadata={"format": "pt"})
        weight_map.update({name: file for name in part})
        del part
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return shapes


_CHILD = r"""
import json, resource, sys
from q35f.io.checkpoint import open_checkpoint
from q35f.quantization.convert import quantize_checkpoint
import q35f.kernels.tensor, tqdm  # what a quantize run imports, so the baseline holds it too
src, out, mode, bits = sys.argv[1:5]
if mode == "quantize":
    summary = quantize_checkpoint(src, out, bits=bits, progress=False)
else:
    with open_checkpoint(src) as ck:
        summary = {"tensors": len(ck.names())}
def peak_rss():
    # VmHWM belongs to this process image; ru_maxrss would also count the parent's memory at
    # fork time, which Linux carries across exec.
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
summary["peak_rss_bytes"] = peak_rss()
print(json.dumps(summary))
"""


def _child(src, out, mode, bits):
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, str(src), str(out), mode, bits],
        capture_output=True, text=True,
    )
    if result.returncode:
        raise RuntimeError(f"{mode} run failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure(args) -> dict:
    config = llama_config(args.layers, args.hidden, args.intermediate, args.heads,
                          args.kv_heads, args.vocab)
    with tempfile.TemporaryDirectory(prefix="q35f-memory-") as tmp:
        src = Path(tmp) / "synthetic"
        shapes = build_checkpoint(src, config, args.shards, args.dtype)
        source_bytes = sum(f.stat().st_size for f in src.glob("*.safetensors"))
        baseline = _child(src, Path(tmp) / "unused", "open", args.bits)
        run = _child(src, Path(tmp) / "out", "quantize", args.bits)
    params = {name: int(np.prod(shape)) for name, shape in shapes.items()}
    largest = max(params.values())
    total = sum(params.values())
    excess = run["peak_rss_bytes"] - baseline["peak_rss_bytes"]
    return {
        "layers": args.layers,
        "shards": args.shards,
        "dtype": args.dtype,
        "bits": args.bits,
        "params": total,
        "source_bytes": source_bytes,
        "total_f32_bytes": 4 * total,
        "largest_tensor_params": largest,
        "largest_tensor_f32_bytes": 4 * largest,
        "baseline_peak_rss_bytes": baseline["peak_rss_bytes"],
        "quantize_peak_rss_bytes": run["peak_rss_bytes"],
        "excess_rss_bytes": excess,
        "excess_over_largest_f32": excess / (4 * largest),
        "excess_over_source": excess / source_bytes,
        "output_bytes": run["file_bytes"],
        "seconds": run["seconds"],
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--intermediate", type=int, default=2816)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--dtype", default="bf16", choices=["bf16", "f16", "f32"])
    p.add_argument("--bits", default="q35")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    r = measure(args)
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"synthetic checkpoint: {r['layers']} layers, {r['params']:,} weights, {r['dtype']}, "
          f"{r['shards']} shards, {r['source_bytes'] / MIB:.1f} MiB "
          f"({r['total_f32_bytes'] / MIB:.1f} MiB as float32)")
    print(f"largest tensor: {r['largest_tensor_params']:,} weights "
          f"({r['largest_tensor_f32_bytes'] / MIB:.1f} MiB as float32)")
    print(f"peak RSS: baseline (import + open) {r['baseline_peak_rss_bytes'] / MIB:.1f} MiB, "
          f"quantize {r['quantize_peak_rss_bytes'] / MIB:.1f} MiB")
    print(f"excess {r['excess_rss_bytes'] / MIB:.1f} MiB = {r['excess_over_largest_f32']:.2f} x "
          f"largest tensor (f32) = {r['excess_over_source']:.3f} x source size")
    print(f"output {r['output_bytes'] / MIB:.1f} MiB ({r['bits']}) in {r['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
