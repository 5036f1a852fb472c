"""`q35f info`: what a checkpoint holds, tensor by tensor: shape, storage type, bits per weight and
bytes, with totals for the linear layers and the whole file. Works on any checkpoint q35f reads."""

from __future__ import annotations

import json

from q35f.io.checkpoint import open_checkpoint
from q35f.io.llama import LINEAR


def model_info(path):
    """Per-tensor rows (name, shape, dtype, bits_per_weight, bytes, params) and totals."""
    with open_checkpoint(path) as ck:
        rows = [
            {
                "name": info.name,
                "shape": list(info.shape),
                "dtype": info.dtype,
                "group_size": info.group_size,
                # the input rotation of a q35f tensor (FORMAT.md §9), else "none"
                "rotation": info.meta[2] if len(info.meta) > 2 else "none",
                # how the file stores its group scales/offsets (FORMAT.md §10)
                "group_params": info.meta[3] if len(info.meta) > 3 else None,
                "bits_per_weight": info.bits_per_weight,
                "bytes": info.nbytes,
                "params": info.n_params,
            }
            for info in ck.infos()
        ]
        linear = [r for r in rows if LINEAR.fullmatch(r["name"])]
        params = sum(r["params"] for r in rows)
        totals = {
            "path": str(ck.path),
            "kind": ck.kind,
            "quantization_config": ck.quant_config,
            "tensors": len(rows),
            "params": params,
            "tensor_bytes": sum(r["bytes"] for r in rows),
            "file_bytes": ck.file_bytes,
            "bits_per_weight": 8 * ck.file_bytes / params,
            "linear_params": sum(r["params"] for r in linear),
            "linear_bytes": sum(r["bytes"] for r in linear),
        }
        lp = totals["linear_params"]
        totals["linear_bits_per_weight"] = 8 * totals["linear_bytes"] / lp if lp else None
    return rows, totals


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def register(subparsers):
    p = subparsers.add_parser(
        "info",
        help="per-tensor shapes, formats, bits/weight and sizes of a checkpoint",
        description="List every tensor of a GGUF file, HF or q35f directory: name, shape, "
        "storage type, bits/weight, bytes; then totals, with bits/weight of the linear layers "
        "and of the whole file.",
    )
    p.add_argument("path", nargs="?", default="default",
                   help="checkpoint (default: the embedded model)")
    p.add_argument("--json", action="store_true", help="print {rows, totals} as JSON")
    p.set_defaults(func=_info_command)


def _info_command(args) -> int:
    rows, totals = model_info(args.path)
    if args.json:
        print(json.dumps({"rows": rows, "totals": totals}))
        return 0
    width = max(len(r["name"]) for r in rows)
    print(f"{'name':<{width}}  {'shape':>14}  {'type':>18}  {'bits/w':>7}  {'bytes':>12}")
    for r in rows:
        shape = "x".join(str(v) for v in r["shape"])
        kind = (r["dtype"] + (f"/g{r['group_size']}" if r["group_size"] else "")
                + ("/rot" if r["rotation"] != "none" else "")
                + ("/e4m4" if r["group_params"] == "e4m4" else ""))
        print(f"{r['name']:<{width}}  {shape:>14}  {kind:>18}  {r['bits_per_weight']:>7.3f}  "
              f"{r['bytes']:>12,}")
    t = totals
    print(f"\n{t['kind']} checkpoint {t['path']}")
    if t["quantization_config"]:
        print(f"quantization_config: {json.dumps(t['quantization_config'])}")
    print(f"tensors: {t['tensors']}, weights: {t['params']:,}")
    if t["linear_params"]:
        print(f"linear layers: {t['linear_params']:,} weights, {format_bytes(t['linear_bytes'])}, "
              f"{t['linear_bits_per_weight']:.4f} bits/weight")
    print(f"file: {format_bytes(t['file_bytes'])} ({t['file_bytes']:,} bytes), "
          f"{t['bits_per_weight']:.4f} bits/weight overall")
    return 0
