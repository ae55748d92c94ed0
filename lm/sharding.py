"""Device mesh, logical axis names and the rules that map them onto mesh axes.

Parameters and activations carry logical names (below); `RULES` maps each name onto mesh axes, so data-,
fully-sharded- and tensor-parallel layouts are a matter of mesh sizes, not code.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from lm.cli import UserError

MESH_AXES = ("data", "fsdp", "tensor")

# Parameter axes.
VOCAB = "vocab"
EMBED = "embed"
POSITION = "position"
HEADS = "heads"
HEAD_DIM = "head_dim"
MLP = "mlp"
# Activation axes: separate names, so a parameter axis and an activation axis may shard differently.
BATCH = "act_batch"
LENGTH = "act_length"
ACT_EMBED = "act_embed"
ACT_HEADS = "act_heads"
ACT_MLP = "act_mlp"
ACT_VOCAB = "act_vocab"

RULES: tuple[tuple[str, Any], ...] = (
    (VOCAB, "tensor"),
    (EMBED, "fsdp"),
    (POSITION, None),
    (HEADS, "tensor"),
    (HEAD_DIM, None),
    (MLP, "tensor"),
    (BATCH, ("data", "fsdp")),
    (LENGTH, None),
    (ACT_EMBED, None),
    (ACT_HEADS, "tensor"),
    (ACT_MLP, "tensor"),
    (ACT_VOCAB, "tensor"),
)


def mesh_shape(sizes: dict[str, int], num_devices: int) -> tuple[int, ...]:
    """Mesh axis sizes in MESH_AXES order; one size may be -1, meaning the rest of the devices."""
    shape = [int(sizes[a]) for a in MESH_AXES]
    named = lambda: ", ".join(f"{a}={s}" for a, s in zip(MESH_AXES, shape, strict=True))  # noqa: E731
    free = [i for i, s in enumerate(shape) if s == -1]
    if len(free) > 1 or any(s == 0 or s < -1 for s in shape):
        raise UserError(f"config.mesh sizes ({named()}) must be positive, with at most one -1")
    fixed = int(np.prod([s for s in shape if s != -1]))
    if free:
        if num_devices % fixed:
            raise UserError(f"config.mesh ({named()}) does not divide the {num_devices} devices")
        shape[free[0]] = num_devices // fixed
    if int(np.prod(shape)) != num_devices:
        raise UserError(f"config.mesh ({named()}) needs {int(np.prod(shape))} devices but {num_devices} are present; "
                        "make the product of the sizes equal the device count (or set one size to -1)")
    return tuple(shape)


def make_mesh(sizes: dict[str, int], devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """A mesh with axes MESH_AXES over all devices (or `devices`), sizes from the config."""
    devices = list(devices if devices is not None else jax.devices())
    shape = mesh_shape(sizes, len(devices))
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)


def logical_shardings(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """NamedShardings for a tree of logically boxed values (e.g. from `jax.eval_shape(init)`)."""
    specs = nn.get_partition_spec(tree)
    return nn.logical_to_mesh_sharding(specs, mesh, RULES)


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Sharding of a [batch, length] array: rows split over the data-parallel axes."""
    spec = nn.logical_to_mesh_axes((BATCH, LENGTH), RULES)
    return NamedSharding(mesh, PartitionSpec(*spec))


def global_batch(local: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """This process's rows of a batch -> global arrays, rows split over the data-parallel axes."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def data_parallel_size(mesh: jax.sharding.Mesh) -> int:
    """How many ways the batch is split."""
    return int(np.prod([mesh.shape[a] for a in ("data", "fsdp")]))
