"""A q35f directory as a transformers Llama whose linear layers run q35f's Fortran kernels.

    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(DIR)
    lm_eval --model hf --model_args pretrained=DIR,trust_remote_code=True --tasks ...

Why remote code shipped in the directory, not a registered quantizer: transformers offers both
extension points, but a quantizer registered with `register_quantizer` exists only after
`import q35f`, which stock tools (lm-eval's `--model hf`, pipelines, scripts) never run. A
config.json `auto_map` works with a plain `from_pretrained` call: `q35f quantize` writes
`modeling_q35f.py` (one import of the classes below, from the installed q35f) next to config.json
and names it in `auto_map` for AutoConfig and AutoModelForCausalLM (q35f.io.remote_code, which
needs no torch). Directories written before this gain both with `q35f export-hf DIR`.

What loading does (`Q35fLlamaForCausalLM.from_pretrained`): it builds transformers' own
LlamaForCausalLM on the meta device, reads the directory with q35f's reader (q35f.runtime.model.Weights:
packed weights go straight into the kernels' tiled layout and stay packed) and puts in
`Q35fLinear` modules for q, k, v, o, gate, up, down and the head, and a `Q35fEmbedding` for the
int8 embedding (the tied head shares its QuantizedTensor). Norms and rotary tables are ordinary
float32 tensors; attention, the KV cache, `generate`, pipelines and chat templates are
transformers' own. transformers' weight loader is not used: it would load the packed bytes as
tensors in the file layout and need a quantizer hook to re-tile and replace them; q35f's reader
does that already. The model is for inference (parameters frozen, float32, CPU).

The kernels read torch's memory: a contiguous float32 CPU tensor is handed to `q35f.matmul` as
a numpy view (`Tensor.numpy()`, no copy) and the result comes back as `torch.from_numpy`.

Why the config class also registers a quantization config: config.json's `quantization_config`
says quant_method "q35f", and lm-eval's HFLM parses it with transformers'
AutoQuantizationConfig before it loads the model, which refuses an unknown method. Importing
this module (which AutoConfig does, through auto_map) registers q35f's with
`register_quantization_config`; no quantizer is registered, since loading does not need one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
from transformers.quantizers import register_quantization_config
from transformers.utils.quantization_config import QuantizationConfigMixin

from q35f.io.checkpoint import open_checkpoint
from q35f.io.directory import QUANT_METHOD, check_quant_config
from q35f.kernels.tensor import QuantizedTensor, matmul
from q35f.runtime.model import LlamaConfig as RuntimeConfig
from q35f.runtime.model import Weights

# from_pretrained keywords that only steer transformers' hub download or its own weight loader:
# accepted and unused here, since a q35f model loads from a local directory with q35f's reader.
# Any other keyword is refused unless it is empty (None, False, "": what callers such as lm-eval
# pass for options they do not use).
_IGNORED_KWARGS = ("trust_remote_code", "revision", "code_revision", "_from_auto",
                   "adapter_kwargs", "cache_dir", "force_download", "local_files_only", "proxies",
                   "token", "low_cpu_mem_usage", "use_safetensors", "weights_only")


def _kernel_matmul(x, qt):
    """q35f.matmul on the last axis of torch tensor x, reading x's memory in place."""
    if x.dtype != torch.float32 or x.device.type != "cpu":
        raise TypeError(f"q35f layers take float32 CPU activations, got {x.dtype} on "
                        f"{x.device}")
    rows = x.detach().reshape(-1, x.shape[-1]).contiguous()  # a view when x is contiguous
    y = matmul(rows.numpy(), qt)  # the kernels read the tensor's own memory
    return torch.from_numpy(y).reshape(*x.shape[:-1], qt.shape[0])


class Q35fLinear(nn.Module):
    """y = x @ W.T with W a QuantizedTensor: q35f.matmul (fused GEMV below 8 rows, banded
    GEMM above). The packed weight is not a torch tensor: no state dict, no autograd."""

    def __init__(self, weight: QuantizedTensor):
        super().__init__()
        self.quantized = weight
        self.out_features, self.in_features = weight.shape

    def forward(self, x):
        return _kernel_matmul(x, self.quantized)

    def extra_repr(self):
        qt = self.quantized
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bits={qt.bits}, group_size={qt.group_size}")


class Q35fEmbedding(nn.Module):
    """Token embedding from a QuantizedTensor: the rows of the tokens asked for, dequantized
    (QuantizedTensor.take_rows); the table stays packed."""

    def __init__(self, weight: QuantizedTensor):
        super().__init__()
        self.quantized = weight
        self.num_embeddings, self.embedding_dim = weight.shape

    def forward(self, input_ids):
        ids = input_ids.detach().reshape(-1).to(device="cpu", dtype=torch.int64)
        rows = self.quantized.take_rows(ids.numpy())
        return torch.from_numpy(rows).reshape(*input_ids.shape, self.embedding_dim)

    def extra_repr(self):
        qt = self.quantized
        return f"{self.num_embeddings}, {self.embedding_dim}, bits={qt.bits}"


@register_quantization_config(QUANT_METHOD)
class Q35fQuantizationConfig(QuantizationConfigMixin):
    """config.json's quantization_config (written by q35f quantize) as transformers reads it."""

    def __init__(self, **fields):
        check_quant_config(fields, "quantization_config")
        self.__dict__.update(fields)


class Q35fLlamaConfig(LlamaConfig):
    """transformers' LlamaConfig; auto_map names it so that AutoConfig imports this module."""


class Q35fLlamaForCausalLM(LlamaForCausalLM):
    """transformers' LlamaForCausalLM with q35f modules for the quantized weights."""

    config_class = Q35fLlamaConfig

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None,
                        **kwargs):
        """Load a local q35f directory (see the module docstring). Keyword arguments of
        transformers' from_pretrained that a CPU float32 q35f model cannot honour raise."""
        if model_args:
            raise TypeError("from_pretrained: positional model arguments are not supported")
        path = Path(pretrained_model_name_or_path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"pretrained_model_name_or_path={str(path)!r}: no config.json there; q35f "
                "models load from a local q35f directory")
        attn_implementation = _check_kwargs(kwargs)
        if config is None:
            config = Q35fLlamaConfig.from_pretrained(path)
        if attn_implementation is not None:
            config._attn_implementation = attn_implementation
        with open_checkpoint(path) as ck:
            if ck.quant_config is None:
                raise ValueError(f"{path}: not a q35f directory (config.json has no q35f "
                                 "quantization_config); load it with transformers alone")
            runtime_config = RuntimeConfig.from_hf(ck.config)
            weights = Weights.from_checkpoint(ck, runtime_config)
            weights.check(runtime_config)
            with torch.device("meta"):  # no float weights are allocated, then replaced
                model = cls(config)
            _install(model, weights)
        model.model.rotary_emb = LlamaRotaryEmbedding(config)  # its buffers were on meta
        if (path / "generation_config.json").is_file():
            model.generation_config = GenerationConfig.from_pretrained(path)
        model.requires_grad_(False)
        model.eval()
        left = [name for name, t in [*model.named_parameters(), *model.named_buffers()]
                if t.is_meta]
        if left:
            raise AssertionError(f"{path}: tensors left without data: {left[:3]}")
        return model

    def tie_weights(self, *args, **kwargs):
        """Nothing to do: a tied head already shares the embedding's QuantizedTensor (or
        float Parameter) since loading."""

    def num_parameters(self, only_trainable: bool = False,
                       exclude_embeddings: bool = False) -> int:
        """Weights of the model, counting a packed matrix as its N x K weights, shared
        ones once (parameters are frozen: only_trainable gives 0)."""
        if only_trainable:
            return 0
        seen, total = set(), 0
        for module in self.modules():
            if exclude_embeddings and isinstance(module, (Q35fEmbedding, nn.Embedding)):
                continue
            tensors = [p for p in module.parameters(recurse=False)]
            if isinstance(module, (Q35fLinear, Q35fEmbedding)):
                tensors.append(module.quantized)
            for t in tensors:
                if id(t) not in seen:
                    seen.add(id(t))
                    total += int(np.prod(t.shape))
        return total

    def save_pretrained(self, *args, **kwargs):
        raise NotImplementedError("a q35f model is written by `q35f quantize`; copy its "
                                  "directory instead of saving the transformers model")


def _install(model, weights):
    """Put the checkpoint's weights into the meta-device model, module by module."""

    def linear(w):
        if isinstance(w, QuantizedTensor):
            return Q35fLinear(w)
        layer = nn.Linear(w.shape[1], w.shape[0], bias=False, device="meta")
        layer.weight = parameter(w)
        return layer

    def parameter(w):
        return nn.Parameter(torch.from_numpy(np.array(w, dtype=np.float32)),
                            requires_grad=False)

    base = model.model
    if isinstance(weights.embed, QuantizedTensor):
        base.embed_tokens = Q35fEmbedding(weights.embed)
    else:
        base.embed_tokens.weight = parameter(weights.embed)
    for layer, lw in zip(base.layers, weights.layers):
        attn, mlp = layer.self_attn, layer.mlp
        attn.q_proj, attn.k_proj = linear(lw.wq), linear(lw.wk)
        attn.v_proj, attn.o_proj = linear(lw.wv), linear(lw.wo)
        mlp.gate_proj, mlp.up_proj = linear(lw.w_gate), linear(lw.w_up)
        mlp.down_proj = linear(lw.w_down)
        layer.input_layernorm.weight = parameter(lw.attn_norm)
        layer.post_attention_layernorm.weight = parameter(lw.mlp_norm)
    base.norm.weight = parameter(weights.norm)
    if weights.lm_head is not None:
        model.lm_head = linear(weights.lm_head)
    elif isinstance(weights.embed, QuantizedTensor):
        model.lm_head = Q35fLinear(weights.embed)  # tied: one packed table for both
    else:
        model.lm_head.weight = base.embed_tokens.weight


def _check_kwargs(kwargs) -> str | None:
    """Refuse what cannot be honoured; returns attn_implementation (None: the config's)."""
    kwargs = dict(kwargs)
    for name in ("dtype", "torch_dtype"):
        value = kwargs.pop(name, None)
        if value not in (None, "auto", "float32", torch.float32):
            raise ValueError(f"from_pretrained: {name}={value!r}; q35f models run in float32 "
                             "(pass float32 or auto)")
    device_map = kwargs.pop("device_map", None)
    devices = set(device_map.values()) if isinstance(device_map, dict) else {device_map}
    if not devices <= {None, "auto", "cpu", torch.device("cpu")}:
        raise ValueError(f"from_pretrained: device_map={device_map!r}; q35f's kernels run on "
                         "the CPU (pass cpu or nothing)")
    qc = kwargs.pop("quantization_config", None)
    if qc is not None:
        method = qc.get("quant_method") if isinstance(qc, dict) else getattr(
            qc, "quant_method", None)
        if method != QUANT_METHOD:
            raise ValueError(f"from_pretrained: quantization_config with quant_method "
                             f"{method!r}; a q35f directory is already quantized by q35f")
    attn_implementation = kwargs.pop("attn_implementation", None)
    for name in _IGNORED_KWARGS:
        kwargs.pop(name, None)
    unsupported = {k: v for k, v in kwargs.items()
                   if not (v is None or v is False or (isinstance(v, str) and not v))}
    if unsupported:
        raise TypeError(f"from_pretrained: unsupported arguments for a q35f model: "
                        f"{sorted(unsupported)}")
    return attn_implementation


__all__ = ["Q35fEmbedding", "Q35fLinear", "Q35fLlamaConfig", "Q35fLlamaForCausalLM",
           "Q35fQuantizationConfig"]
