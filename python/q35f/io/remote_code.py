"""The two things in a q35f directory that let transformers load it: `modeling_q35f.py` and
config.json's `auto_map` (remote code, loaded with `trust_remote_code=True`).

The file only imports q35f.integrations.transformers from the installed q35f, where the model
classes are (and where the module docstring says why remote code rather than a registered
quantizer). The directory writer adds both (`write_side_files`); a directory written before
gains them with `q35f export-hf DIR`. Needs neither torch nor transformers.
"""

from __future__ import annotations

import json
from pathlib import Path

from q35f.io.directory import check_quant_config

REMOTE_CODE_FILE = "modeling_q35f.py"
REMOTE_CODE = '''"""q35f model code for transformers (trust_remote_code=True).

The implementation is the installed q35f package (q35f.integrations.transformers); this file only
names its classes for config.json's auto_map. Written by `q35f quantize` / `q35f export-hf`.
"""

from q35f.integrations.transformers import Q35fLlamaConfig, Q35fLlamaForCausalLM  # noqa: F401
'''
AUTO_MAP = {
    "AutoConfig": "modeling_q35f.Q35fLlamaConfig",
    "AutoModelForCausalLM": "modeling_q35f.Q35fLlamaForCausalLM",
}


def write_transformers_files(directory) -> None:
    """Make the q35f directory loadable with `AutoModelForCausalLM.from_pretrained(directory,
    trust_remote_code=True)`: write modeling_q35f.py and config.json's auto_map. Idempotent."""
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: missing; a q35f directory needs config.json")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path}: invalid JSON ({err})") from None
    if not isinstance(config, dict) or config.get("quantization_config") is None:
        raise ValueError(f"{config_path}: no quantization_config; not a q35f directory "
                         "(transformers loads unquantized checkpoints by itself)")
    check_quant_config(config["quantization_config"], config_path)
    config["auto_map"] = dict(AUTO_MAP)
    (directory / REMOTE_CODE_FILE).write_text(REMOTE_CODE, encoding="utf-8")
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def register(subparsers):
    p = subparsers.add_parser(
        "export-hf",
        help="make a q35f directory loadable by transformers' AutoModelForCausalLM",
        description="Write modeling_q35f.py and config.json's auto_map into a q35f directory, so "
        "that AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True) and lm-eval's "
        "--model hf load it (q35f quantize already does this for new directories).",
    )
    p.add_argument("directory", help="a q35f directory (written by q35f quantize)")
    p.set_defaults(func=_export_command)


def _export_command(args) -> int:
    write_transformers_files(args.directory)
    print(f"{args.directory}: wrote {REMOTE_CODE_FILE} and config.json auto_map; load it with "
          f"AutoModelForCausalLM.from_pretrained({str(args.directory)!r}, trust_remote_code=True)")
    return 0
