"""Decode speed (`python -m lm.bench --config X --decode`): tokens/s of the sampler's decode loop per weight format and
batch size, against the memory-bandwidth bound and, where `transformers` and `torch` are installed, against
`GPT2LMHeadModel.generate()` with the same weights, timed in turns in the same process.

A step at batch 1 reads every weight once, so weight bytes / copy bandwidth (a large numpy copy, bytes copied
per second, the best of copies before, between and after the timings) bounds its time from below; the figure
printed is the fraction of that bound reached (above 100% where reading alone beats a copy's pace). Prompts
are random ids, decoding is greedy and never stops early; time includes the prefill.
"""

import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lm.convert.gpt2 import hf_config, hf_from_params
from lm.errors import UserError
from lm.model.config import ModelConfig
from lm.model.transformer import init_cache
from lm.sample import weights as weight_formats
from lm.sample.generate import cache_slots, decode, model_apply, model_for


def copy_bandwidth(nbytes: int = 1 << 29, repeats: int = 5) -> float:
    """Bytes per second of the best of `repeats` copies of an `nbytes` array (bytes copied, not read + written)."""
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return nbytes / best


def weight_bytes_per_token(c: ModelConfig, params: Any) -> int:
    """Bytes of the weights one decode step at batch 1 reads: all but the rows that look-ups skip (an untied
    input table and the position table are read one row at a time)."""
    skipped = 0
    if not c.tie_embeddings:
        skipped += weight_formats.nbytes(params["token_embedding"])
    if c.position == "learned":
        skipped += weight_formats.nbytes(params["position_embedding"])
    return weight_formats.nbytes(params) - skipped


def lm_decoder(c: ModelConfig, params: Any, batch: int, prompt_len: int, new_tokens: int) -> Callable[[], Any]:
    """A closure decoding `new_tokens` greedy tokens after a random prompt of `prompt_len`, for each row."""
    prompt = jnp.asarray(np.random.default_rng(0).integers(0, c.vocab_size, (batch, prompt_len)), jnp.int32)
    cache = init_cache(c, batch, cache_slots(prompt_len, new_tokens, c.max_len))
    apply = model_apply(model_for(c, params))
    key = jax.random.key(0)

    def run() -> Any:
        tokens, _ = decode(apply, params, cache, prompt, key, new_tokens, 0.0, context=c.max_len)
        return jax.block_until_ready(tokens)

    return run


def transformers_decoder(c: ModelConfig, params: Any, batch: int, prompt_len: int,
                         new_tokens: int) -> Callable[[], Any] | None:
    """The same greedy decode through `GPT2LMHeadModel.generate()` (float32, same weights), or None where
    `transformers` is not installed or the model is not GPT-2 style."""
    try:
        import torch
        import transformers
    except ImportError:
        return None
    try:
        config = hf_config(c, {})
    except UserError:  # not GPT-2 style
        return None
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**config)).eval()
    state = {k: torch.from_numpy(v) for k, v in hf_from_params(params, c).items()}
    model.load_state_dict(state, strict=False)
    model.tie_weights()
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, c.vocab_size, (batch, prompt_len)))

    def run() -> Any:
        with torch.no_grad():
            return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                  min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)

    return run


def agreement(c: ModelConfig, params: Any, weights: Any, want: np.ndarray, prompt_len: int) -> tuple[float, float]:
    """How close `weights` (another format of `params`) come to them: the share of greedy tokens equal to
    float32's (`want` [B, new tokens]), and the relative error of the logits on that sequence (teacher-forced)."""
    batch, new_tokens = want.shape
    got = np.asarray(lm_decoder(c, weights, batch, prompt_len, new_tokens)())
    prompt = np.random.default_rng(0).integers(0, c.vocab_size, (batch, prompt_len))
    tokens = np.concatenate([prompt, want], axis=1)[:, : c.max_len]
    def logits(p: Any) -> np.ndarray:
        positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        return np.asarray(jax.jit(model_for(c, p).apply)({"params": p}, tokens, positions, jnp.ones_like(tokens)))

    ref, out = logits(params), logits(weights)
    return float((got == want).mean()), float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def measure(c: ModelConfig, params: Any, batches: Sequence[int], formats: Sequence[str], prompt_len: int = 16,
            new_tokens: int = 128, repeats: int = 3) -> list[dict[str, Any]]:
    """One row per (batch, decoder): tokens/s (median of `repeats`, decoders timed in turns), weight bytes,
    and the fraction of the bandwidth bound reached."""
    bandwidth = 0.0
    rows = []
    for batch in batches:
        bandwidth = max(bandwidth, copy_bandwidth())  # measured again per batch: the best copy is the ceiling
        runs: dict[str, tuple[Callable[[], Any], int]] = {}
        agree: dict[str, tuple[float, float]] = {}
        want = None  # float32's greedy tokens, decoded once per batch
        for fmt in formats:
            weights = weight_formats.convert(params, fmt)
            runs[f"lm {fmt}"] = (lm_decoder(c, weights, batch, prompt_len, new_tokens),
                                 weight_bytes_per_token(c, weights))
            if fmt != "none":
                if want is None:
                    want = np.asarray(lm_decoder(c, params, batch, prompt_len, new_tokens)())
                agree[f"lm {fmt}"] = agreement(c, params, weights, want, prompt_len)
        peer = transformers_decoder(c, params, batch, prompt_len, new_tokens)
        if peer is not None:
            runs["transformers float32"] = (peer, weight_bytes_per_token(c, params))
        for fn, _ in runs.values():
            fn()  # compile and warm up
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(repeats):
            for name, (fn, _) in runs.items():
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
        for name, (_, nbytes) in runs.items():
            tokens_per_s = batch * new_tokens / float(np.median(times[name]))
            rows.append({"batch": batch, "decoder": name, "tokens_per_s": tokens_per_s, "weight_bytes": nbytes,
                         "steps_per_s": tokens_per_s / batch, "agreement": agree.get(name)})
    bandwidth = max(bandwidth, copy_bandwidth())
    for r in rows:  # a step at any batch reads every weight once: bandwidth / bytes steps per second at most
        r["bandwidth"], r["fraction_of_bound"] = bandwidth, r["steps_per_s"] * r["weight_bytes"] / bandwidth
    return rows


def report(rows: list[dict[str, Any]], prompt_len: int, new_tokens: int, tensor: int = 1) -> None:
    """Prints the rows with each decoder's ratio to `transformers` at the same batch."""
    print(f"decode: {prompt_len}-token prompts, {new_tokens} new tokens (greedy, prefill included), lm's model "
          f"over {tensor} device(s); copy bandwidth {rows[0]['bandwidth'] / 1e9:.1f} GB/s measured now")
    peers = {r["batch"]: r["tokens_per_s"] for r in rows if r["decoder"].startswith("transformers")}
    for r in rows:
        ratio = f" | {r['tokens_per_s'] / peers[r['batch']]:.2f}x transformers" if r["batch"] in peers else ""
        agree = ""
        if r["agreement"]:
            agree = (f" | vs float32: {r['agreement'][0]:.1%} of greedy tokens equal, logits rel. error "
                     f"{r['agreement'][1]:.1e}")
        print(f"  batch {r['batch']:3d} {r['decoder']:22s} {r['tokens_per_s']:9.1f} tokens/s | weights "
              f"{r['weight_bytes'] / 1e6:6.0f} MB | {r['fraction_of_bound']:6.1%} of the bandwidth bound{ratio}{agree}")
