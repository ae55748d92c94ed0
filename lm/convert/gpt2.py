"""GPT-2 checkpoints in Hugging Face format (config.json + model.safetensors) <-> `lm` workdirs, with no network.

The imported workdir holds one checkpoint (step 0) of parameters, model config and, when the folder has
`vocab.json` and `merges.txt`, GPT-2's byte-level BPE tokenizer; `lm.sample` and `lm.evaluate` read it like
any other. Hugging Face's Conv1D weights are [in, out], as `lm`'s kernels; the fused
query/key/value projection is split into three [D, N, H] kernels.
"""

import json
import os
from typing import Any

import jax
import numpy as np
from safetensors.numpy import load_file, save_file

from lm.checkpoint.manager import Checkpointer, make_meta
from lm.checkpoint.reader import read
from lm.config import ModelConfig
from lm.errors import UserError
from lm.model import tree
from lm.model.transformer import TransformerLM
from lm.parallel.mesh import make_layout
from lm.parallel.placement import abstract_params
from lm.tokenizer.gpt2 import GPT2Tokenizer
from lm.tokenizer.kinds import AnyTokenizer

GELU_TANH = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def gpt2_model_config(hf: dict[str, Any], scan_layers: bool = True) -> ModelConfig:
    """The ModelConfig of a Hugging Face GPT-2 `config.json`."""
    if hf.get("model_type") != "gpt2" or hf.get("activation_function", "gelu_new") not in GELU_TANH:
        raise UserError(f"only GPT-2 with a tanh GELU converts, got model_type={hf.get('model_type')!r}, "
                            f"activation_function={hf.get('activation_function')!r}")
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn") or not hf.get(
            "scale_attn_weights", True) or not hf.get("tie_word_embeddings", True):
        raise UserError("this GPT-2 uses attention scaling options or untied embeddings that lm does not model")
    d = hf["n_embd"]
    return ModelConfig(vocab_size=hf["vocab_size"], max_len=hf["n_positions"], num_layers=hf["n_layer"],
                       num_heads=hf["n_head"], embed_dim=d, mlp_dim=hf.get("n_inner") or 4 * d,
                       norm_eps=hf.get("layer_norm_epsilon", 1e-5), scan_layers=scan_layers)


def gpt2_hf_config(c: ModelConfig, tokenizer: AnyTokenizer | None = None) -> dict[str, Any]:
    """A Hugging Face GPT-2 `config.json` for a GPT-2-style ModelConfig, with the tokenizer's start and end ids
    (none without one: `transformers` would take GPT-2's 50256, outside a smaller vocabulary)."""
    gpt2_style = (c.position, c.norm, c.mlp, c.use_bias, c.tie_embeddings, c.qk_norm, c.kv_heads) == (
        "learned", "layernorm", "gelu", True, True, False, c.num_heads)
    if not gpt2_style:
        raise UserError("only GPT-2-style models export (learned positions, LayerNorm, GELU, biases, tied "
                            "embeddings, no QK-norm, as many kv heads as heads)")
    return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": c.vocab_size,
            "n_positions": c.max_len, "n_embd": c.embed_dim, "n_layer": c.num_layers, "n_head": c.num_heads,
            "n_inner": c.mlp_dim, "activation_function": "gelu_new", "layer_norm_epsilon": c.norm_eps,
            "tie_word_embeddings": True, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
            "bos_token_id": tokenizer.bos_id if tokenizer else None,
            "eos_token_id": tokenizer.eos_id if tokenizer else None}


def _layer_from_gpt2(t: dict[str, np.ndarray], i: int, c: ModelConfig) -> dict[str, Any]:
    p = f"h.{i}."
    d, n, h = c.embed_dim, c.num_heads, c.head_dim
    qkv_w = np.split(t[p + "attn.c_attn.weight"], 3, axis=1)  # 3 x [D, D]
    qkv_b = np.split(t[p + "attn.c_attn.bias"], 3)
    attn = {name: {"kernel": w.reshape(d, n, h), "bias": b.reshape(n, h)}
            for name, w, b in zip(("query", "key", "value"), qkv_w, qkv_b, strict=True)}
    attn["out"] = {"kernel": t[p + "attn.c_proj.weight"].reshape(n, h, d), "bias": t[p + "attn.c_proj.bias"]}
    norm = lambda k: {"scale": t[p + k + ".weight"], "bias": t[p + k + ".bias"]}  # noqa: E731
    mlp = {name: {"kernel": t[f"{p}mlp.{hf}.weight"], "bias": t[f"{p}mlp.{hf}.bias"]}
           for name, hf in (("fc", "c_fc"), ("proj", "c_proj"))}
    return {"attn": attn, "mlp": mlp, "norm_attn": norm("ln_1"), "norm_mlp": norm("ln_2")}


def params_from_gpt2(tensors: dict[str, np.ndarray], c: ModelConfig) -> dict[str, Any]:
    """`lm` parameters (numpy, float32) from the tensors of a Hugging Face GPT-2 `model.safetensors`."""
    t = {k.removeprefix("transformer."): v.astype(np.float32) for k, v in tensors.items()}
    layers = [_layer_from_gpt2(t, i, c) for i in range(c.num_layers)]
    params: dict[str, Any] = {
        "token_embedding": t["wte.weight"], "position_embedding": t["wpe.weight"],
        "norm_final": {"scale": t["ln_f.weight"], "bias": t["ln_f.bias"]},
    }
    return tree.with_layers(params, layers, c.scan_layers, stack=np.stack)


def gpt2_from_params(params: dict[str, Any], c: ModelConfig) -> dict[str, np.ndarray]:
    """The tensors of a Hugging Face GPT-2 `model.safetensors` from `lm` parameters."""
    params = jax.tree.map(np.asarray, params)
    d = c.embed_dim
    out = {"transformer.wte.weight": params["token_embedding"][: c.vocab_size],  # without padding rows
           "transformer.wpe.weight": params["position_embedding"],
           "transformer.ln_f.weight": params["norm_final"]["scale"],
           "transformer.ln_f.bias": params["norm_final"]["bias"]}
    for i, layer in enumerate(tree.layers(params, c.num_layers)):
        a, p = layer["attn"], f"transformer.h.{i}."
        qkv = ("query", "key", "value")
        out[p + "attn.c_attn.weight"] = np.concatenate([a[k]["kernel"].reshape(d, d) for k in qkv], axis=1)
        out[p + "attn.c_attn.bias"] = np.concatenate([a[k]["bias"].reshape(d) for k in qkv])
        out[p + "attn.c_proj.weight"] = a["out"]["kernel"].reshape(d, d)
        out[p + "attn.c_proj.bias"] = a["out"]["bias"]
        for hf, name in (("ln_1", "norm_attn"), ("ln_2", "norm_mlp")):
            out[f"{p}{hf}.weight"], out[f"{p}{hf}.bias"] = layer[name]["scale"], layer[name]["bias"]
        for hf, name in (("c_fc", "fc"), ("c_proj", "proj")):
            out[f"{p}mlp.{hf}.weight"] = layer["mlp"][name]["kernel"]
            out[f"{p}mlp.{hf}.bias"] = layer["mlp"][name]["bias"]
    return {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}


def import_gpt2(hf_dir: str, workdir: str, scan_layers: bool = True) -> ModelConfig:
    """Writes a workdir holding the GPT-2 checkpoint in `hf_dir` (config.json + model.safetensors)."""
    paths = [os.path.join(hf_dir, f) for f in ("config.json", "model.safetensors")]
    for path in paths:
        if not os.path.isfile(path):
            raise UserError(f"{path} does not exist; --hf_dir must hold config.json and model.safetensors")
    with open(paths[0]) as f:
        c = gpt2_model_config(json.load(f), scan_layers)
    tokenizer = None
    if any(os.path.exists(os.path.join(hf_dir, f)) for f in ("vocab.json", "merges.txt")):
        tokenizer = GPT2Tokenizer.from_folder(hf_dir)
        if tokenizer.vocab_size > c.vocab_size:
            raise UserError(f"the tokenizer in {hf_dir} has {tokenizer.vocab_size} ids but the model only "
                                f"{c.vocab_size}")
    params = params_from_gpt2(load_file(paths[1]), c)
    abstract = abstract_params(TransformerLM(c), make_layout({"data": -1, "fsdp": 1, "tensor": 1}))
    try:
        params = jax.tree.map(lambda x, a: jax.device_put(x, a.sharding), params, abstract)
    except ValueError as e:
        raise UserError(f"the tensors in {paths[1]} do not fit the shapes in its config.json ({e})") from e
    ckpt = Checkpointer(workdir)
    if ckpt.latest_step() is not None:
        raise UserError(f"{workdir} already holds checkpoints; import into a new --workdir")
    ckpt.save_params(0, params, make_meta(c, tokenizer, {"imported_from": os.path.abspath(hf_dir)}))
    ckpt.wait()
    ckpt.close()
    return c


def export_gpt2(workdir: str, out_dir: str, step: int | None = None) -> None:
    """Writes config.json + model.safetensors of a GPT-2-style workdir's checkpoint."""
    layout = make_layout({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    step, params, c, tokenizer, _ = read(workdir, step, lambda run: layout)
    hf_config = gpt2_hf_config(c, tokenizer)
    os.makedirs(out_dir, exist_ok=True)
    save_file(gpt2_from_params(params, c), os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2)
    if isinstance(tokenizer, GPT2Tokenizer):
        with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump(tokenizer.vocab, f, ensure_ascii=False)
        with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "".join(m + "\n" for m in tokenizer.merges))
