"""The optimizer (lm/optim.py) is the optax chain its config names (clipping, AdamW or another optax optimizer,
the decay mask, the schedule), a non-finite step is dropped, and weight decay reaches exactly the kernels,
embeddings and head."""

import dataclasses
import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import score_by_hand

from lm import optim
from lm.backends import select
from lm.errors import UserError
from lm.model.config import ModelConfig
from lm.parallel.config import MeshConfig
from lm.parallel.placement import abstract_params, boxed_params

# Every number other than its default (lm/config.py) and optax's, so that a setting left unread shows.
CONFIG = optim.OptimConfig(name="adamw", lr=1e-2, min_lr=1e-3, warmup_steps=2, b1=0.8, b2=0.95, weight_decay=0.05,
                           grad_clip=0.5)


def _params(rng: np.random.Generator) -> dict:
    """Scanned layers ('blocks': a stacked matrix and a stacked bias) beside a plain matrix and vector."""
    shapes = {"blocks": {"kernel": (2, 4, 3), "bias": (2, 3)}, "head": {"kernel": (3, 5), "scale": (5,)}}
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s), jnp.float32), shapes,
                        is_leaf=lambda x: isinstance(x, tuple))


MASK = {"blocks": {"kernel": True, "bias": False}, "head": {"kernel": True, "scale": False}}  # kernels decayed


def _reference_schedule() -> optax.Schedule:
    """CONFIG's schedule over 10 steps, written out: warmup 0 -> 1e-2 over 2 steps, cosine to 1e-3 at step 10."""
    return optax.warmup_cosine_decay_schedule(0.0, 1e-2, 2, 10, 1e-3)


def _run(tx: optax.GradientTransformation, params: dict, grads: list[dict]) -> tuple[dict, object]:
    """The parameters and optimizer state after one guarded update per gradient (lm/optim.update_if_finite)."""
    state = tx.init(params)

    @jax.jit
    def step(p, s, g):
        finite = jnp.isfinite(optax.global_norm(g))
        return optim.update_if_finite(tx, g, s, p, finite)

    for g in grads:
        params, state = step(params, state, g)
    return params, state


@pytest.mark.parametrize("name", ["adamw", "lion"])
def test_the_optimizer_is_the_optax_chain_its_config_names_and_drops_non_finite_steps(name):
    """`config.optim` -> clipping, then optax.<name> with the config's betas, the weight-decay mask (an explicit
    list here) and the schedule; a step whose gradients hold a NaN leaves the parameters and the optimizer's
    moments and count as they were, and the next step goes on as if it had never come."""
    rng = np.random.default_rng(0)
    params = _params(rng)
    cfg = dataclasses.replace(CONFIG, name=name)
    tx, *_ = optim.optimizer(cfg, total_steps=10)
    make = {"adamw": optax.adamw, "lion": optax.lion}[name]
    reference = optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                            make(_reference_schedule(), b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=MASK))
    # gradient norms from well below the clipping norm to far above it; the third holds a NaN
    sizes = [0.01, 50.0, 1.0, 0.3, 20.0]
    grads = [jax.tree.map(lambda x, s=s: s * jnp.asarray(rng.normal(size=x.shape), jnp.float32), params) for s in sizes]
    grads[2] = jax.tree.map(lambda g: g.at[(0,) * g.ndim].set(jnp.nan), grads[2])
    ours, _ = _run(tx, params, grads)
    want, _ = _run(reference, params, grads[:2] + grads[3:])
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    before = _run(tx, params, grads[:2])
    after = _run(tx, params, grads[:3])  # the NaN step last: nothing moved
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
        np.testing.assert_array_equal(a, b)
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), ours, params)
    assert min(jax.tree.leaves(moved)) > 1e-3  # every parameter was updated, decayed or not


def test_an_optimizer_that_cannot_take_the_config_is_one_line():
    with pytest.raises(UserError, match=r"optax.sgd takes no masked weight decay; set --config.optim.weight_decay=0"):
        dataclasses.replace(CONFIG, name="sgd")  # takes no weight decay
    tx, *_ = optim.optimizer(dataclasses.replace(CONFIG, name="sgd", weight_decay=0.0), 10)
    assert tx.init({"w": jnp.zeros(3)}) is not None
    with pytest.raises(UserError, match=r"config.optim.name='no_such_optimizer' is not an optax optimizer"):
        dataclasses.replace(CONFIG, name="no_such_optimizer", weight_decay=0.0)


GPT2 = ModelConfig(vocab_size=64, max_len=16, num_layers=2, num_heads=4, embed_dim=32, mlp_dim=64)
LLAMA = dataclasses.replace(GPT2, num_kv_heads=2, position="rope", norm="rmsnorm", mlp="swiglu", use_bias=False,
                            tie_embeddings=False, qk_norm=True)
# Every parameter of each family, decayed (True) or not: kernels, embeddings and the head are; biases (the
# attention's are [N, H]), norm scales and every other vector are not.
LAYER_PARAMS = {
    "gpt2": {"attn/query/kernel": True, "attn/query/bias": False, "attn/key/kernel": True, "attn/key/bias": False,
             "attn/value/kernel": True, "attn/value/bias": False, "attn/out/kernel": True, "attn/out/bias": False,
             "mlp/fc/kernel": True, "mlp/fc/bias": False, "mlp/proj/kernel": True, "mlp/proj/bias": False,
             "norm_attn/scale": False, "norm_attn/bias": False, "norm_mlp/scale": False, "norm_mlp/bias": False},
    "llama": {"attn/query/kernel": True, "attn/key/kernel": True, "attn/value/kernel": True, "attn/out/kernel": True,
              "attn/query_norm/scale": False, "attn/key_norm/scale": False, "mlp/gate/kernel": True,
              "mlp/up/kernel": True, "mlp/proj/kernel": True, "norm_attn/scale": False, "norm_mlp/scale": False},
}
TOP_PARAMS = {
    "gpt2": {"token_embedding": True, "position_embedding": True, "norm_final/scale": False, "norm_final/bias": False},
    "llama": {"token_embedding": True, "lm_head": True, "norm_final/scale": False},
}


@pytest.mark.parametrize("scanned", [True, False], ids=["scanned", "unrolled"])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_weight_decay_reaches_kernels_embeddings_and_head_and_nothing_else(family, scanned):
    cfg = dataclasses.replace({"gpt2": GPT2, "llama": LLAMA}[family], scan_layers=scanned)
    shapes = jax.eval_shape(lambda: nn.unbox(boxed_params(select.model(cfg), 0)))
    got = {"/".join(k.key for k in path): bool(leaf)
           for path, leaf in jax.tree_util.tree_leaves_with_path(optim.decay_mask(shapes))}
    layers = ["blocks"] if scanned else [f"block_{i}" for i in range(cfg.num_layers)]
    want = {f"{layer}/{name}": d for layer in layers for name, d in LAYER_PARAMS[family].items()}
    assert got == {**want, **TOP_PARAMS[family]}


def _wsd(step: int, lr: float, min_lr: float, warmup: int, total: int, cooldown: int, shape: str) -> float:
    """Warmup-stable-decay written out: the learning rate of the update after `step` updates."""
    if step < warmup:
        return lr * step / warmup
    if step < total - cooldown:
        return lr
    done = min(1.0, (step - (total - cooldown)) / cooldown)
    return min_lr + (lr - min_lr) * ((1 - done) if shape == "linear" else (1 - done ** 0.5))


def test_a_wsd_run_stopped_in_its_stable_phase_continues_to_a_new_length_as_if_started_with_it(tiny_config,
                                                                                               tmp_path, capsys):
    from lm.train.loop import train

    def run(workdir, steps, schedule_steps, cooldown):
        cfg = tiny_config.copy_and_resolve_references()
        cfg.train.update(steps=steps, log_every=1, eval_every=1000)
        cfg.optim.update(schedule="wsd", lr=3e-3, min_lr=3e-4, warmup_steps=3, cooldown_steps=cooldown,
                         cooldown="1-sqrt", schedule_steps=schedule_steps)
        train(cfg, str(workdir), devices=jax.devices()[:1])  # the optimizer, not the mesh, is under test
        with open(workdir / "metrics.jsonl") as f:
            return {r["step"]: (r["loss"], r["lr"]) for r in map(json.loads, f) if "loss" in r}

    # Planned as 24 steps with a 5-step cooldown, stopped at step 10 (stable), then continued to 30 steps with an
    # 8-step cooldown: every step as in a run of 30 steps with that cooldown from the start.
    first = run(tmp_path / "continued", 10, 24, 5)
    assert "starting at step 0" in capsys.readouterr().out
    continued = {**first, **run(tmp_path / "continued", 30, 0, 8)}
    assert "resuming at step 10" in capsys.readouterr().out
    straight = run(tmp_path / "straight", 30, 0, 8)
    assert sorted(continued) == sorted(straight) == list(range(1, 31))
    for step in range(1, 31):
        assert continued[step][0] == straight[step][0], step  # the same batches and updates, bitwise
        want = _wsd(step - 1, 3e-3, 3e-4, warmup=3, total=30, cooldown=8, shape="1-sqrt")
        assert continued[step][1] == pytest.approx(want, rel=1e-6, abs=1e-12), step
    assert continued[23][1] == pytest.approx(3e-3)  # the cooldown starts at update 22 (logged as step 23) ...
    assert continued[30][1] == pytest.approx(3e-4 + 2.7e-3 * (1 - (7 / 8) ** 0.5))  # ... and is 7/8 done at 30


def test_bad_optimizer_and_schedule_settings_are_one_line():
    from lm import config as config_lib

    def fails(match, **optim_keys):
        cfg = config_lib.defaults()
        cfg.optim.update(optim_keys)
        with pytest.raises(UserError, match=match):
            config_lib.build(cfg)

    fails(r"^config.optim.schedule must be one of cosine, wsd, linear, constant, got 'cosin'$", schedule="cosin")
    fails(r"^config.optim.cooldown must be one of linear, 1-sqrt, got 'sqrt'$", schedule="wsd", cooldown="sqrt")
    fails(r"^config.optim.cooldown_steps=1950 is longer than the run after its warmup \(schedule steps 2000 - "
          r"warmup_steps 100 = 1900\); shorten the cooldown or lengthen the run$", schedule="wsd", cooldown_steps=1950)
    fails(r"^config.optim.name=schedule_free_adamw replaces the decay by averaging; set --config.optim.schedule="
          r"constant \(its warmup stays warmup_steps\), got 'cosine'$", name="schedule_free_adamw")
    fails(r"^config.optim.name='adamm' is not an optax optimizer taking a learning rate; use e.g. adamw, muon, "
          r"schedule_free_adamw, lion, adam or sgd$", name="adamm")


def _leaf(tree: dict, path: str):
    return functools.reduce(lambda t, k: t[k], path.split("/"), tree)


def _leaf_after(ref: optax.GradientTransformation, path: str, params: dict, grads: list[dict]) -> jax.Array:
    """The leaf at `path` ('a/b') of `params` where `ref`, run on that leaf alone with its gradients, takes it."""
    p = _leaf(params, path)
    s = ref.init(p)
    for g in grads:
        u, s = ref.update(_leaf(g, path), s, p)
        p = optax.apply_updates(p, u)
    return p


def _assert_leaf_follows(ref: optax.GradientTransformation, path: str, params: dict, grads: list[dict],
                         got: dict) -> None:
    """The leaf at `path` of `got` is where `ref` takes it (`_leaf_after`)."""
    np.testing.assert_allclose(_leaf(got, path), _leaf_after(ref, path, params, grads), rtol=1e-6, atol=1e-7,
                               err_msg=path)


@pytest.mark.parametrize("muon_lr", [0.0, 3e-2])
def test_muon_orthogonalizes_each_hidden_matrix_in_its_matrix_view_and_adamw_takes_the_rest(muon_lr):
    """Against optax's Muon on each kernel reshaped by hand to [inputs, outputs] (per layer), at `muon_lr` (0:
    the AdamW rate) and momentum `muon_beta` (0.7; at optax's default 0.95 the kernels land elsewhere), and
    optax's AdamW on the other leaves (decayed: embeddings and head; not decayed: biases and norm scales)."""
    rng = np.random.default_rng(0)
    shapes = {"blocks": {"attn": {"query": {"kernel": (2, 8, 2, 4), "bias": (2, 2, 4)},
                                  "out": {"kernel": (2, 2, 4, 8), "bias": (2, 8)}},
                         "mlp": {"fc": {"kernel": (2, 8, 16)}, "proj": {"kernel": (2, 16, 8)}},
                         "norm_mlp": {"scale": (2, 8)}},
              "token_embedding": (12, 8), "lm_head": (8, 12)}
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s), jnp.float32), shapes,
                          is_leaf=lambda x: isinstance(x, tuple))
    grads = [jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params) for _ in range(3)]
    cfg = dataclasses.replace(CONFIG, name="muon", warmup_steps=0, muon_beta=0.7, grad_clip=0.0, schedule="constant",
                              muon_lr=muon_lr)
    tx, *_ = optim.optimizer(cfg, 10)
    got, _ = _run(tx, params, grads)

    def muon_by_hand(path, inputs, beta=0.7):  # each layer's kernel as a matrix [prod(inputs), prod(outputs)]
        keys = path.split("/")
        x = functools.reduce(lambda t, k: t[k], keys, params)
        gs = [functools.reduce(lambda t, k: t[k], keys, g) for g in grads]
        out = []
        for layer in range(x.shape[0]):
            flat = lambda a: a[layer].reshape(int(np.prod(a.shape[1:1 + inputs])), -1)  # noqa: E731
            ref = optax.contrib.muon(muon_lr or 1e-2, beta=beta, weight_decay=0.05)
            p = flat(x)
            s = ref.init(p)
            for g in gs:
                u, s = ref.update(flat(g), s, p)
                p = optax.apply_updates(p, u)
            out.append(p.reshape(x.shape[1:]))
        return np.stack(out)

    for path, inputs in (("blocks/attn/query/kernel", 1), ("blocks/attn/out/kernel", 2),
                         ("blocks/mlp/fc/kernel", 1), ("blocks/mlp/proj/kernel", 1)):
        keys = path.split("/")
        want = muon_by_hand(path, inputs)
        np.testing.assert_allclose(functools.reduce(lambda t, k: t[k], keys, got), want, rtol=1e-5, atol=1e-6,
                                   err_msg=path)
        if path == "blocks/mlp/fc/kernel" and not muon_lr:
            assert np.max(np.abs(muon_by_hand(path, inputs, beta=0.95) - want)) > 1e-3
    rest = {"decayed": ["token_embedding", "lm_head"],
            "kept": ["blocks/attn/query/bias", "blocks/attn/out/bias", "blocks/norm_mlp/scale"]}
    for kind, paths in rest.items():
        ref = optax.adamw(1e-2, b1=0.8, b2=0.95, weight_decay=0.05 if kind == "decayed" else 0.0)
        for path in paths:
            _assert_leaf_follows(ref, path, params, grads, got)


def test_muon_updates_the_parameters_its_patterns_name_and_adamw_the_rest():
    """`muon_params` naming the MLP kernel and the token embedding: those two follow optax's Muon, the attention
    kernel (Muon's by the default pattern) follows AdamW with decay."""
    rng = np.random.default_rng(1)
    shapes = {"block_0": {"attn": {"query": {"kernel": (8, 2, 4)}}, "mlp": {"fc": {"kernel": (8, 16)}}},
              "token_embedding": (12, 8)}
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s), jnp.float32), shapes,
                          is_leaf=lambda x: isinstance(x, tuple))
    grads = [jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params) for _ in range(3)]
    cfg = dataclasses.replace(CONFIG, name="muon", warmup_steps=0, muon_beta=0.7, muon_lr=0.0, grad_clip=0.0,
                              schedule="constant", muon_params="*/mlp/*/kernel,token_embedding")
    got, _ = _run(optim.optimizer(cfg, 10)[0], params, grads)
    muon = optax.contrib.muon(1e-2, beta=0.7, weight_decay=0.05)
    for path in ("block_0/mlp/fc/kernel", "token_embedding"):
        _assert_leaf_follows(muon, path, params, grads, got)
    _assert_leaf_follows(optax.adamw(1e-2, b1=0.8, b2=0.95, weight_decay=0.05), "block_0/attn/query/kernel", params,
                         grads, got)


@pytest.mark.parametrize("name", ["muon", "schedule_free_adamw"])
def test_a_run_stopped_and_resumed_ends_bitwise_equal_to_one_never_stopped(name, tiny_config, tmp_path):
    """Muon and schedule-free AdamW; schedule-free's checkpoint holds its average x as the parameters every
    reader takes ((y - (1 - b1) z) / b1 of the trained y and its z), and the trained y with the optimizer state;
    the loop's evaluation is the loss of those parameters, scored by hand."""
    from lm.checkpoint import reader
    from lm.parallel import mesh as shd
    from lm.train import state as state_lib
    from lm.train.loop import train

    def run(workdir, steps):
        cfg = tiny_config.copy_and_resolve_references()
        cfg.train.update(steps=steps, eval_every=1000)
        cfg.optim.update(name=name, warmup_steps=2, schedule_steps=10)  # one schedule for both runs
        if name == "schedule_free_adamw":
            cfg.optim.schedule = "constant"
        train(cfg, str(workdir), devices=jax.devices()[:1])  # the optimizer, not the mesh, is under test
        ckpt, step, model_config, _, run_config = reader.open_run(str(workdir))
        tx, *_ = optim.optimizer(optim.OptimConfig(**run_config["optim"]), run_config["train"]["steps"])
        layout = shd.make_layout(MeshConfig())
        model = select.model(model_config)
        restored = ckpt.restore(step, state_lib.abstract(model, tx, layout), optim.optimizer(cfg.optim, 1).apart)
        read = ckpt.params(step, abstract_params(model, layout))  # what the sampler and evaluator take
        return step, jax.device_get(restored), jax.device_get(read)

    assert run(tmp_path / "resumed", 6)[0] == 6
    (step, (a, a_data), a_read), (_, (b, b_data), _) = run(tmp_path / "resumed", 10), run(tmp_path / "straight", 10)
    assert step == 10 and a_data == b_data
    with open(tmp_path / "straight" / "metrics.jsonl") as f:  # the loop evaluated what readers read
        logged = [json.loads(line)["val_loss"] for line in f if "val_loss" in line][-1]
    nll, count, _ = score_by_hand(str(tmp_path / "straight"), max_batches=tiny_config.train.eval_batches)
    assert logged == pytest.approx(nll / count, rel=1e-5)
    leaves = jax.tree.leaves(a)  # parameters, momenta or z, second moments, the counts
    assert len(leaves) > 2 * len(jax.tree.leaves(a.params))
    for x, y in zip(leaves, jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    if name == "muon":
        for x, y in zip(jax.tree.leaves(a_read), jax.tree.leaves(a.params), strict=True):
            np.testing.assert_array_equal(x, y)
        return
    sf = next(s for s in a.opt_state if isinstance(s, optax.contrib.ScheduleFreeState))
    for x, y, z in zip(jax.tree.leaves(a_read), jax.tree.leaves(a.params), jax.tree.leaves(sf.z), strict=True):
        np.testing.assert_allclose(x, (y - 0.1 * z) / 0.9, rtol=1e-5, atol=1e-6)
    pairs = zip(jax.tree.leaves(a_read), jax.tree.leaves(a.params), strict=True)
    gap = max(float(np.max(np.abs(x - y))) for x, y in pairs)
    assert gap > 1e-4  # not the trained parameters


def test_schedule_free_adamw_is_optax_with_decay_masked_and_evaluates_the_weighted_average_of_its_iterates():
    """Against optax's schedule_free_adamw per group of leaves (decayed kernels; biases and scales with no
    decay) with the config's interpolation b1 (0.8; at optax's default 0.9 the parameters land elsewhere); and
    the evaluation parameters equal the average of the iterates z_2..z_{n+1} weighted by the running maximum of
    the learning rate squared, computed here from the z of each state."""
    rng = np.random.default_rng(0)
    params = _params(rng)
    cfg = dataclasses.replace(CONFIG, name="schedule_free_adamw", schedule="constant", grad_clip=0.0)
    tx, *_ = optim.optimizer(cfg, 10)
    grads = [jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params) for _ in range(5)]
    got, state = _run(tx, params, grads)
    for path, decayed in (("blocks/kernel", True), ("head/kernel", True), ("blocks/bias", False),
                          ("head/scale", False)):
        ref = optax.contrib.schedule_free_adamw(1e-2, warmup_steps=2, b1=0.8, b2=0.95,
                                                weight_decay=0.05 if decayed else 0.0)
        _assert_leaf_follows(ref, path, params, grads, got)
        other = optax.contrib.schedule_free_adamw(1e-2, warmup_steps=2, b2=0.95, weight_decay=0.05 if decayed else 0.0)
        assert np.max(np.abs(_leaf_after(other, path, params, grads) - _leaf(got, path))) > 1e-4, path
    # x by its definition: z_{k+1} weighted by w_k = (max lr of steps 1..k)^2, lr 5e-3 at step 1 then 1e-2
    zs, s, p = [], tx.init(params), params
    for g in grads:
        u, s = tx.update(g, s, p)
        p = optax.apply_updates(p, u)
        zs.append(s[-1].z)
    weights = np.array([5e-3, 1e-2, 1e-2, 1e-2, 1e-2]) ** 2
    average = jax.tree.map(lambda *z: sum(w * zi for w, zi in zip(weights, z, strict=True)) / weights.sum(), *zs)
    x = optim.eval_params(state, got)
    for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(average), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_muon_params_that_are_not_matrices_or_match_nothing_are_one_line():
    shapes = {"blocks": {"attn": {"query": {"kernel": (2, 8, 2, 4)}}, "norm_mlp": {"scale": (2, 8)}},
              "token_embedding": (12, 8)}
    params = jax.tree.map(jnp.zeros, shapes, is_leaf=lambda x: isinstance(x, tuple))
    views = optim.muon_dimensions(params, "*kernel,token_embedding")
    assert views["token_embedding"] == optax.contrib.MuonDimensionNumbers((0,), (1,))
    assert views["blocks"]["norm_mlp"]["scale"] is None
    with pytest.raises(UserError, match=r"^config.optim.muon_params='\*kernel,\*scale' gives Muon "
                                        r"blocks/norm_mlp/scale of shape \[2, 8\], which is not a weight matrix"):
        optim.muon_dimensions(params, "*kernel,*scale")
    with pytest.raises(UserError, match=r"^config.optim.muon_params='\*kernal': \['\*kernal'\] matches no parameter"):
        optim.muon_dimensions(params, "*kernal")
