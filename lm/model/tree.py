"""How the decoder's layers are named in a parameter tree, and conversions between the two layouts.

Scanned layers (`config.model.scan_layers`) are one subtree, SCANNED, whose arrays carry a leading layer axis;
unrolled layers are one subtree each, `layer_name(i)`. Everything outside them (embeddings, final norm, head)
is the same in both.
"""

import re
from typing import Any

import jax
import jax.numpy as jnp

SCANNED = "blocks"


def layer_name(i: int) -> str:
    """The subtree of unrolled layer `i`."""
    return f"block_{i}"


def is_layer(key: str) -> bool:
    """Whether a top-level key of the parameters holds layers (scanned or one unrolled layer)."""
    return key == SCANNED or re.fullmatch(r"block_\d+", key) is not None


def in_scanned_layers(path: tuple[Any, ...]) -> bool:
    """Whether a tree path (as `jax.tree_util` gives it) lies in the scanned layers, whose arrays have a leading
    layer axis."""
    return any(getattr(k, "key", None) == SCANNED for k in path)


def layers(params: dict[str, Any], num_layers: int) -> list[Any]:
    """Each layer's parameters, from either layout."""
    if SCANNED in params:
        return [jax.tree.map(lambda x, i=i: x[i], params[SCANNED]) for i in range(num_layers)]
    return [params[layer_name(i)] for i in range(num_layers)]


def with_layers(params: dict[str, Any], per_layer: list[Any], scanned: bool, stack=jnp.stack) -> dict[str, Any]:
    """`params` with its layers replaced by `per_layer`, stacked into SCANNED (with `stack`) or unrolled."""
    out = {k: v for k, v in params.items() if not is_layer(k)}
    if scanned:
        out[SCANNED] = jax.tree.map(lambda *x: stack(x), *per_layer)
    else:
        out.update({layer_name(i): layer for i, layer in enumerate(per_layer)})
    return out


def relayout(params: dict[str, Any], num_layers: int, scanned: bool) -> dict[str, Any]:
    """The parameters with their layers scanned or unrolled."""
    return with_layers(params, layers(params, num_layers), scanned)
