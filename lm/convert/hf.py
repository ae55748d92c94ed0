"""Hugging Face model folders <-> `lm` workdirs, from local files only.

A folder holds `config.json`, the weights (`model.safetensors`, or shards named by `model.safetensors.index.json`)
and, optionally, the tokenizer (`tokenizer.json`, or GPT-2's `vocab.json` + `merges.txt`). An import writes a
workdir of one checkpoint (step 0: parameters, model config, tokenizer) that `lm.train` fine-tunes from and
`lm.sample` and `lm.evaluate` read like any other; an export writes a folder `transformers` loads. The families
(gpt2.py; llama.py for Llama, Qwen2, Qwen3, Mistral) map tensors and configs; this module reads and writes.
"""

import json
import os
from types import ModuleType
from typing import Any

import jax
import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from lm.checkpoint.manager import Checkpointer, make_meta
from lm.checkpoint.reader import read
from lm.config import ModelConfig
from lm.convert import gpt2, llama
from lm.errors import UserError
from lm.model.transformer import TransformerLM
from lm.parallel.mesh import make_layout
from lm.parallel.placement import abstract_params
from lm.tokenizer.huggingface import HFTokenizer

FAMILIES: dict[str, ModuleType] = {"gpt2": gpt2, "llama": llama, "qwen2": llama, "qwen3": llama, "mistral": llama}
ARCHITECTURES = {"GPT2LMHeadModel": "gpt2", **{arch: family for family, arch in llama.ARCHITECTURES.items()}}
IGNORED = ("rotary_emb.inv_freq", ".attn.bias", ".attn.masked_bias")  # buffers some exports carry, not weights


def read_config(hf_dir: str) -> tuple[dict[str, Any], ModuleType]:
    """config.json of a Hugging Face folder and the family module that converts it."""
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(path):
        raise UserError(f"{path} does not exist; --hf_dir must hold a Hugging Face config.json and its weights")
    with open(path) as f:
        hf = json.load(f)
    arch = (hf.get("architectures") or [None])[0]
    family = ARCHITECTURES.get(arch) if arch else hf.get("model_type")
    if family not in FAMILIES:
        raise UserError(f"architecture {arch or hf.get('model_type')!r} is not supported; lm converts "
                        f"{', '.join(ARCHITECTURES)}")
    return {**hf, "model_type": family}, FAMILIES[family]


def read_tensors(hf_dir: str) -> dict[str, np.ndarray]:
    """Every tensor of model.safetensors, or of the shards model.safetensors.index.json lists."""
    single, index = (os.path.join(hf_dir, f) for f in ("model.safetensors", "model.safetensors.index.json"))
    if os.path.isfile(single):
        files = [single]
    elif os.path.isfile(index):
        with open(index) as f:
            files = [os.path.join(hf_dir, name) for name in sorted(set(json.load(f)["weight_map"].values()))]
    else:
        raise UserError(f"{hf_dir} holds neither model.safetensors nor model.safetensors.index.json")
    tensors: dict[str, np.ndarray] = {}
    for path in files:
        try:
            tensors.update(load_file(path))
        except (OSError, SafetensorError) as e:
            raise UserError(f"{path} does not read as safetensors ({e})") from e
    return {k: v for k, v in tensors.items() if not k.endswith(IGNORED)}


def _check_tensors(family: ModuleType, tensors: dict[str, np.ndarray], c: ModelConfig, hf_dir: str) -> Any:
    """The `lm` parameters from `tensors`, or one line naming the first missing, unexpected or misshapen one."""
    expected = family.hf_from_params(jax.tree.map(lambda a: np.zeros(a.shape, np.float32), _abstract(c)), c)
    missing = sorted(set(expected) - set(tensors))
    tied = {"lm_head.weight"} if c.tie_embeddings else set()  # a tied head some exports write out anyway
    unexpected = sorted(set(tensors) - set(expected) - tied)
    if missing or unexpected:
        names = ", ".join((missing or unexpected)[:3])
        raise UserError(f"the safetensors in {hf_dir} {'lack' if missing else 'have unexpected'} tensors "
                        f"({names}{', ...' if len(missing or unexpected) > 3 else ''}) for the model its config.json "
                        "describes")
    for name, want in expected.items():
        if tensors[name].shape != want.shape:
            raise UserError(f"tensor {name} in {hf_dir} has shape {tensors[name].shape}; its config.json "
                            f"implies {want.shape}")
    return family.params_from_hf(tensors, c)


def _abstract(c: ModelConfig) -> Any:
    return abstract_params(TransformerLM(c), make_layout({"data": -1, "fsdp": 1, "tensor": 1}))


def import_hf(hf_dir: str, workdir: str, scan_layers: bool = True) -> ModelConfig:
    """Writes a workdir holding the Hugging Face model in `hf_dir` (and its tokenizer, if the folder has one)."""
    hf, family = read_config(hf_dir)
    c = family.model_config(hf, scan_layers)
    tokenizer = None
    if any(os.path.exists(os.path.join(hf_dir, f)) for f in ("tokenizer.json", "vocab.json", "merges.txt")):
        tokenizer = HFTokenizer.from_folder(hf_dir)
        if tokenizer.vocab_size > c.vocab_size:
            raise UserError(f"the tokenizer in {hf_dir} has {tokenizer.vocab_size} ids but the model only "
                            f"{c.vocab_size}")
    ckpt = Checkpointer(workdir)
    if ckpt.latest_step() is not None:
        raise UserError(f"{workdir} already holds checkpoints; import into a new --workdir")
    params = _check_tensors(family, family.canonical_names(read_tensors(hf_dir)), c, hf_dir)
    params = jax.tree.map(lambda x, a: jax.device_put(x, a.sharding), params, _abstract(c))
    ckpt.save_params(0, params, make_meta(c, tokenizer, {"imported_from": os.path.abspath(hf_dir)}))
    ckpt.wait()
    ckpt.close()
    return c


def export_hf(workdir: str, out_dir: str, step: int | None = None) -> str:
    """Writes config.json, model.safetensors and the tokenizer of a workdir's checkpoint; returns the family."""
    layout = make_layout({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    step, params, c, tokenizer, _ = read(workdir, step, lambda run: layout)
    name = "gpt2" if gpt2.is_gpt2_style(c) else llama.family_of(c)
    family = FAMILIES[name]
    special = {"bos": tokenizer.bos_id, "eos": tokenizer.eos_id} if tokenizer else {"bos": None, "eos": None}
    if isinstance(tokenizer, HFTokenizer) and name != "gpt2":
        special["pad"] = tokenizer.pad_id
    config = family.hf_config(c, special)
    os.makedirs(out_dir, exist_ok=True)
    save_file(family.hf_from_params(params, c), os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    if isinstance(tokenizer, HFTokenizer):
        tokenizer.save(out_dir)
    return name
