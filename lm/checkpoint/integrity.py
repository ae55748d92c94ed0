"""Checkpoint integrity: a checksum of every array, written at save and compared at restore, and parameters that
must be finite. A checkpoint that fails either is `Damaged`: the trainer and the readers take the one before."""

from typing import Any

import jax
import jax.numpy as jnp


class Damaged(Exception):
    """A checkpoint that does not restore whole: a file unreadable or missing, an array whose checksum does not
    match the one written at save, or parameters that are not finite."""


def _leaf_checksum(x: jax.Array) -> jax.Array:
    """A uint32 checksum of an array's bits: its 32-bit words, word i weighted by 2i + 1, summed mod 2**32 (the
    same under any sharding; a changed word, or two words swapped, changes it)."""
    x = jnp.asarray(x)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    width = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
    words = jax.lax.bitcast_convert_type(x, width).astype(jnp.uint32).reshape(-1)
    weights = jnp.arange(words.size, dtype=jnp.uint32) * jnp.uint32(2) + jnp.uint32(1)
    return jnp.sum(words * weights, dtype=jnp.uint32)


@jax.jit
def _fingerprint(tree: Any) -> tuple[Any, jax.Array]:
    finite = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jax.tree.map(_leaf_checksum, tree), jnp.all(jnp.asarray(finite or [True]))


def _value(x: jax.Array) -> Any:
    """A replicated result as a Python number (any process holds all of it)."""
    return x.addressable_shards[0].data.item()


def _name(path: tuple) -> str:
    """A tree path as 'blocks/mlp/fc/kernel'."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def fingerprint(tree: Any) -> tuple[dict[str, int], bool]:
    """({array path: checksum}, whether every floating-point array is finite) of a tree of arrays."""
    sums, finite = _fingerprint(tree)
    flat = jax.tree_util.tree_flatten_with_path(sums)[0]
    return {_name(path): _value(x) for path, x in flat}, bool(_value(finite))


def verify(name: str, tree: Any, expected: dict[str, int] | None) -> None:
    """Raises Damaged if `tree` (item `name` of a checkpoint) differs from the checksums written at save, or if
    it is the parameters and one is not finite. Checkpoints written before checksums were are only checked
    for finiteness."""
    sums, finite = fingerprint(tree)
    if expected is not None:
        changed = [k for k, v in sums.items() if expected.get(k) != v]
        if changed:
            raise Damaged(f"{name} array {changed[0]} does not match the checksum written at save"
                          + (f" ({len(changed)} arrays differ)" if len(changed) > 1 else ""))
    if name == "params" and not finite:
        raise Damaged("its parameters are not finite")
