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
import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save_file

from lm import folders
from lm.checkpoint.manager import Checkpointer, make_meta
from lm.checkpoint.reader import read
from lm.convert import gpt2, llama
from lm.errors import UserError
from lm.model.config import ModelConfig
from lm.model.transformer import TransformerLM
from lm.parallel.config import MeshConfig
from lm.parallel.mesh import make_layout, tensor_layout
from lm.parallel.placement import abstract_params
from lm.tokenizer.huggingface import HFTokenizer
from lm.train.workdir import hold

FAMILIES: dict[str, ModuleType] = {"gpt2": gpt2, "llama": llama, "qwen2": llama, "qwen3": llama, "mistral": llama}
ARCHITECTURES = {"GPT2LMHeadModel": "gpt2", **{arch: family for family, arch in llama.ARCHITECTURES.items()}}
IGNORED = ("rotary_emb.inv_freq", ".attn.bias", ".attn.masked_bias")  # buffers some exports carry, not weights


def _read_json(path: str, what: str) -> dict[str, Any]:
    """A JSON object from `path` (`what` names it in messages), or one line."""
    try:
        with open(path, "rb") as f:
            value = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{path} does not read as JSON ({e}); {what} must be a JSON object") from None
    if not isinstance(value, dict):
        raise UserError(f"{path} holds a JSON {type(value).__name__}; {what} must be a JSON object")
    return value


def read_config(hf_dir: str) -> tuple[dict[str, Any], ModuleType]:
    """config.json of a Hugging Face folder and the family module that converts it."""
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(path):
        raise UserError(f"{path} does not exist; --hf_dir must hold a Hugging Face config.json and its weights")
    hf = _read_json(path, "a Hugging Face config.json")
    archs = hf.get("architectures")
    arch = archs[0] if isinstance(archs, list) and archs else None
    family = ARCHITECTURES.get(arch) if isinstance(arch, str) else hf.get("model_type")
    if not isinstance(family, str) or family not in FAMILIES:
        raise UserError(f"architecture {arch or hf.get('model_type')!r} is not supported; lm converts "
                        f"{', '.join(ARCHITECTURES)}")
    return {**hf, "model_type": family}, FAMILIES[family]


def model_config(hf: dict[str, Any], family: ModuleType, hf_dir: str, scan_layers: bool = True) -> ModelConfig:
    """The ModelConfig `config.json` describes, or one line naming the key that is missing or wrong."""
    path = os.path.join(hf_dir, "config.json")
    try:
        c = family.model_config(hf, scan_layers)
    except KeyError as e:
        raise UserError(f"{path} lacks {e.args[0]!r}, which a {hf['model_type']} config.json has") from None
    except (TypeError, ValueError, ZeroDivisionError) as e:
        raise UserError(f"{path} holds a value of the wrong kind ({e})") from None
    sizes = {"vocab_size": c.vocab_size, "max_len": c.max_len, "num_layers": c.num_layers, "num_heads": c.num_heads,
             "embed_dim": c.embed_dim, "mlp_dim": c.mlp_dim, "head_dim": c.head_dim, "num_kv_heads": c.kv_heads}
    bad = [f"{k}={v!r}" for k, v in sizes.items() if not isinstance(v, int) or isinstance(v, bool) or v < 1]
    if bad:
        raise UserError(f"{path} gives sizes that are not positive integers ({', '.join(bad)})")
    return c


def weight_files(hf_dir: str) -> list[str]:
    """model.safetensors, or the shards model.safetensors.index.json lists."""
    single, index = (os.path.join(hf_dir, f) for f in ("model.safetensors", "model.safetensors.index.json"))
    if os.path.isfile(single):
        return [single]
    if not os.path.isfile(index):
        raise UserError(f"{hf_dir} holds neither model.safetensors nor model.safetensors.index.json")
    weight_map = _read_json(index, "a safetensors index").get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise UserError(f"{index} has no 'weight_map' of tensor names to file names")
    names = sorted(set(weight_map.values()))
    outside = [n for n in names if os.path.basename(n) != n]
    if outside:
        raise UserError(f"{index} names shards outside its folder ({outside[0]}); shards are file names in {hf_dir}")
    return [os.path.join(hf_dir, name) for name in names]


def _shapes(files: list[str]) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape, from the files' headers (nothing is read beyond them)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for path in files:
        try:
            with safe_open(path, "numpy") as f:
                shapes.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
        except (OSError, SafetensorError) as e:
            raise UserError(f"{path} does not read as safetensors ({e})") from e
    return {k: v for k, v in shapes.items() if not k.endswith(IGNORED)}


def read_tensors(hf_dir: str) -> dict[str, np.ndarray]:
    """Every tensor of model.safetensors, or of the shards model.safetensors.index.json lists."""
    tensors: dict[str, np.ndarray] = {}
    for path in weight_files(hf_dir):
        try:
            tensors.update(load_file(path))
        except (OSError, SafetensorError) as e:
            raise UserError(f"{path} does not read as safetensors ({e})") from e
    return {k: v for k, v in tensors.items() if not k.endswith(IGNORED)}


def _check_shapes(family: ModuleType, shapes: dict[str, tuple[int, ...]], c: ModelConfig, hf_dir: str) -> None:
    """One line naming the first missing, unexpected or misshapen tensor. The expected shapes are traced, never
    made: a config.json describing a far larger model than its files hold costs nothing to refuse."""
    expected = jax.eval_shape(lambda p: family.hf_from_params(p, c, jnp), _abstract(c))
    missing = sorted(set(expected) - set(shapes))
    tied = {"lm_head.weight"} if c.tie_embeddings else set()  # a tied head some exports write out anyway
    unexpected = sorted(set(shapes) - set(expected) - tied)
    if missing or unexpected:
        names = ", ".join((missing or unexpected)[:3])
        raise UserError(f"the safetensors in {hf_dir} {'lack' if missing else 'have unexpected'} tensors "
                        f"({names}{', ...' if len(missing or unexpected) > 3 else ''}) for the model its config.json "
                        "describes")
    for name, want in expected.items():
        if shapes[name] != want.shape:
            raise UserError(f"tensor {name} in {hf_dir} has shape {shapes[name]}; its config.json "
                            f"implies {want.shape}")


def _abstract(c: ModelConfig) -> Any:
    return abstract_params(TransformerLM(c), make_layout(MeshConfig()))


def import_hf(hf_dir: str, workdir: str, scan_layers: bool = True) -> ModelConfig:
    """Writes a workdir holding the Hugging Face model in `hf_dir` (and its tokenizer, if the folder has one).
    Everything is checked (config, tokenizer, tensor names and shapes) before the workdir is touched."""
    hf, family = read_config(hf_dir)
    c = model_config(hf, family, hf_dir, scan_layers)
    tokenizer = None
    if any(os.path.exists(os.path.join(hf_dir, f)) for f in ("tokenizer.json", "vocab.json", "merges.txt")):
        tokenizer = HFTokenizer.from_folder(hf_dir)
        if tokenizer.vocab_size > c.vocab_size:
            raise UserError(f"the tokenizer in {hf_dir} has {tokenizer.vocab_size} ids but the model only "
                            f"{c.vocab_size}")
    _check_shapes(family, family.canonical_names(_shapes(weight_files(hf_dir))), c, hf_dir)
    with hold(workdir):
        ckpt = Checkpointer(workdir)
        if ckpt.latest_step() is not None:
            raise UserError(f"{workdir} already holds checkpoints; import into a new --workdir")
        params = family.params_from_hf(family.canonical_names(read_tensors(hf_dir)), c)
        params = jax.tree.map(lambda x, a: jax.device_put(x, a.sharding), params, _abstract(c))
        ckpt.save_params(0, params, make_meta(c, tokenizer, {"imported_from": os.path.abspath(hf_dir)}))
        ckpt.wait()
        ckpt.close()
    return c


EXPORTED = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def _export_folder(out_dir: str, overwrite: bool) -> None:
    """One line unless `out_dir` can take an export: new or empty or, with `overwrite`, holding other files (kept)
    but no sharded model (which the single file written beside it would not replace)."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"--export {out_dir} is a file, not a folder; pass a folder's path")
    names = sorted(os.listdir(out_dir)) if os.path.isdir(out_dir) else []
    if names and not overwrite:
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise UserError(f"--export {out_dir} is not empty ({shown}); pass a new or empty folder, or --overwrite to "
                        f"replace the files an export writes ({', '.join(EXPORTED)}) and keep the others")
    if "model.safetensors.index.json" in names:
        raise UserError(f"--export {out_dir} holds a sharded model (model.safetensors.index.json) that an export's "
                        "single model.safetensors would not replace; pass a new or empty folder")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot make --export {out_dir} ({e.strerror}); use another path") from None
    folders.check_writable(out_dir, "--export")


def export_hf(workdir: str, out_dir: str, step: int | None = None, overwrite: bool = False) -> str:
    """Writes config.json, model.safetensors and the tokenizer of a workdir's checkpoint into `out_dir` (each file
    whole, under a fresh name first); returns the family."""
    _export_folder(out_dir, overwrite)
    layout = tensor_layout(1)
    step, params, c, tokenizer, _ = read(workdir, step, lambda run: layout)
    name = "gpt2" if gpt2.is_gpt2_style(c) else llama.family_of(c)
    family = FAMILIES[name]
    special = {"bos": tokenizer.bos_id, "eos": tokenizer.eos_id} if tokenizer else {"bos": None, "eos": None}
    if isinstance(tokenizer, HFTokenizer) and name != "gpt2":
        special["pad"] = tokenizer.pad_id
    config = family.hf_config(c, special)
    try:
        with folders.replacing(os.path.join(out_dir, "model.safetensors")) as tmp:
            save_file(family.hf_from_params(params, c), tmp, metadata={"format": "pt"})
        folders.write_json(os.path.join(out_dir, "config.json"), config, indent=2)
        if isinstance(tokenizer, HFTokenizer):
            tokenizer.save(out_dir)
    except OSError as e:
        raise UserError(f"cannot write in --export {out_dir} ({e.strerror}); make room or use another path") from None
    return name
