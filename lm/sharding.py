"""Device mesh, logical axis names, and the rules (config data) that map them onto mesh axes.

Mesh axes: `data` splits the batch and replicates the model; `fsdp` splits the batch and also shards every
parameter and its optimizer state (gathered just in time for each layer); `tensor` splits attention heads,
the MLP width and the vocabulary inside each layer. Parameters and activations carry logical names (below);
the rules map each name onto mesh axes, in order of precedence, so data-, fully-sharded- and tensor-parallel
layouts are a matter of mesh sizes, not code.
"""

import contextlib
import dataclasses
import os
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from lm.cli import UserError

MESH_AXES = ("data", "fsdp", "tensor")

# Parameter axes.
VOCAB = "vocab"
EMBED = "embed"
POSITION = "position"
HEADS = "heads"
KV_HEADS = "kv_heads"
HEAD_DIM = "head_dim"
MLP = "mlp"
LAYERS = "layers"  # the stacking axis of scanned layers
# Activation axes: separate names, so a parameter axis and an activation axis may shard differently.
BATCH = "act_batch"
LENGTH = "act_length"
ACT_EMBED = "act_embed"
ACT_HEADS = "act_heads"
ACT_KV_HEADS = "act_kv_heads"
ACT_MLP = "act_mlp"
ACT_VOCAB = "act_vocab"

Rules = tuple[tuple[str, Any], ...]

# A name takes the first rule whose mesh axes the array does not use yet, so later rules are fallbacks:
# a kernel shards `embed` over fsdp and `mlp` over tensor; a bias with no `embed` axis shards `mlp` (or
# `head_dim`) over fsdp instead, so that FSDP leaves no parameter replicated.
DEFAULT_RULES: Rules = (
    (EMBED, "fsdp"),
    (VOCAB, "tensor"),
    (HEADS, "tensor"),
    (KV_HEADS, "tensor"),
    (MLP, ("tensor", "fsdp")),
    (MLP, "tensor"),
    (HEAD_DIM, "fsdp"),
    (POSITION, None),
    (LAYERS, None),
    (BATCH, ("data", "fsdp")),
    (LENGTH, None),
    (ACT_EMBED, None),
    (ACT_HEADS, "tensor"),
    (ACT_KV_HEADS, "tensor"),
    (ACT_MLP, "tensor"),
    (ACT_VOCAB, "tensor"),
)


def as_rules(rules: Sequence[Sequence[Any]]) -> Rules:
    """Rules from config data (lists from JSON become tuples)."""
    def axes(a: Any) -> Any:
        return tuple(a) if isinstance(a, (list, tuple)) else a

    try:
        return tuple((str(name), axes(a)) for name, a in rules)
    except (TypeError, ValueError) as e:
        raise UserError(f"config.mesh.rules must be pairs (logical name, mesh axis or axes or None): {e}") from e


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


def cpu_device_count(sizes: dict[str, Any], batch_size: int, cores: int) -> int:
    """The JAX devices `config.mesh.cpu_devices` asks a host of `cores` cores for; 0 means one per core, as
    many as fit the mesh's fixed axes and divide the batch."""
    n = int(sizes.get("cpu_devices", 1))
    if n:
        return n
    shape = [int(sizes[a]) for a in MESH_AXES]
    fixed = int(np.prod([s for s in shape if s > 0]))
    if -1 not in shape:
        return fixed
    return max([d for d in range(1, cores + 1) if d % fixed == 0 and batch_size % d == 0], default=1)


def split_cpu(sizes: dict[str, Any], batch_size: int) -> int:
    """Splits the host CPU into `cpu_device_count(...)` JAX devices before JAX starts its backends; returns it.

    Small models train faster data-parallel over single-core devices than with each small op spread over all
    cores. A device count already in XLA_FLAGS (e.g. fake devices in tests) wins; accelerators are unaffected.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    n = cpu_device_count(sizes, batch_size, cores)
    if n > 1 and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        try:
            jax.config.update("jax_num_cpu_devices", n)
        except RuntimeError:  # backends already started (e.g. called in-process): keep their devices
            pass
    return n


@dataclasses.dataclass(frozen=True)
class Layout:
    """A mesh and the logical-axis rules in force on it: everything that decides where arrays live."""

    mesh: jax.sharding.Mesh
    rules: Rules

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Sets the mesh and the rules, for jitted code that constrains activations by logical name."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            yield

    def shardings(self, boxed: Any) -> Any:
        """NamedShardings for a tree of logically boxed values (e.g. from `jax.eval_shape(init)`)."""
        return nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), self.mesh, self.rules)

    def batch_sharding(self) -> NamedSharding:
        """Sharding of a [batch, length] array: rows split over the data-parallel axes."""
        return NamedSharding(self.mesh, PartitionSpec(*nn.logical_to_mesh_axes((BATCH, LENGTH), self.rules)))

    def global_batch(self, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's rows of a batch -> global arrays, rows split over the data-parallel axes."""
        sharding = self.batch_sharding()
        return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}

    @property
    def data_parallel(self) -> int:
        """How many ways the batch is split."""
        spec = self.batch_sharding().spec[0]
        axes = spec if isinstance(spec, tuple) else (spec,) if spec else ()
        return int(np.prod([self.mesh.shape[a] for a in axes]))

    def replicated_batch_axes(self, params: Any) -> tuple[str, ...]:
        """The mesh axes that split the batch, if the devices are CPUs and no parameter in `params` (arrays or
        ShapeDtypeStructs) is split over any mesh axis; else (). Such a step can reduce its gradients in one
        buffer (`train.loss_and_grads`); on accelerators XLA's own per-gradient all-reduces overlap the backward."""
        spec = self.batch_sharding().spec[0]
        axes = tuple(a for a in (spec if isinstance(spec, tuple) else (spec,) if spec else ())
                     if self.mesh.shape[a] > 1)
        if not axes or self.mesh.devices.flat[0].platform != "cpu":
            return ()

        def split(spec: PartitionSpec) -> bool:
            named = [n for a in spec if a is not None for n in (a if isinstance(a, tuple) else (a,))]
            return any(self.mesh.shape[n] > 1 for n in named)

        return () if any(split(x.sharding.spec) for x in jax.tree.leaves(params)) else axes

    def describe(self) -> str:
        sizes = ", ".join(f"{a}={n}" for a, n in self.mesh.shape.items())
        rules = ", ".join(f"{name}->{axes}" for name, axes in self.rules if axes is not None)
        return f"mesh ({sizes}) over {self.mesh.size} devices in {jax.process_count()} process(es); rules: {rules}"

    def check_divisible(self, boxed: Any, names: dict[str, str] | None = None) -> None:
        """Stops with one line when a parameter dimension does not divide over the mesh axes the rules give it."""
        names = names or {}
        problems = []
        leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
        for box in leaves:
            if not isinstance(box, nn.Partitioned):
                continue
            spec = nn.logical_to_mesh_axes(box.names, self.rules)
            for name, size, axes in zip(box.names, box.value.shape, spec, strict=False):
                axes = () if axes is None else axes if isinstance(axes, tuple) else (axes,)
                ways = int(np.prod([self.mesh.shape[a] for a in axes]))
                if size % ways:
                    mesh = " x ".join(f"{a}={self.mesh.shape[a]}" for a in axes)
                    problems.append(f"{names.get(name, name)}={size} is not divisible by mesh {mesh}")
        if problems:
            raise UserError("; ".join(sorted(set(problems))) + "; change the model or the mesh (config.mesh)")


def make_layout(sizes: dict[str, Any], devices: Sequence[jax.Device] | None = None) -> Layout:
    """The layout of `config.mesh` (axis sizes and rules) over all devices, or over `devices`."""
    devices = list(devices if devices is not None else jax.devices())
    shape = mesh_shape(sizes, len(devices))
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    mesh = jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)
    return Layout(mesh, as_rules(sizes.get("rules", DEFAULT_RULES)))


def tensor_layout(tensor: int, flag: str = "--tensor") -> Layout:
    """A mesh that splits the model over `tensor` devices (heads, MLP, vocabulary) for sampling; a CPU host is
    made into that many devices first. `flag` names the option in errors."""
    if tensor < 1:
        raise UserError(f"{flag} must be >= 1 (devices to split the model over), got {tensor}")
    split_cpu({"cpu_devices": tensor}, 1)
    if tensor > jax.device_count():
        raise UserError(f"{flag} {tensor} needs that many devices; this host has {jax.device_count()}")
    return make_layout({"data": 1, "fsdp": 1, "tensor": tensor}, jax.devices()[:tensor])


def bytes_per_device(tree: Any) -> dict[jax.Device, int]:
    """Bytes that each of this process's devices holds of the arrays in `tree`."""
    held: dict[jax.Device, int] = defaultdict(int)
    for x in jax.tree.leaves(tree):
        for shard in x.addressable_shards:
            held[shard.device] += shard.data.nbytes
    return dict(held)


def sync(name: str) -> None:
    """Waits until every process gets here (no-op with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def global_max(value: int) -> int:
    """The largest `value` over all processes."""
    if jax.process_count() == 1:
        return value
    return int(np.max(multihost_utils.process_allgather(np.asarray(value, np.int64))))


def allgather_bytes(payload: bytes) -> list[bytes]:
    """Every process's `payload`, in process order."""
    if jax.process_count() == 1:
        return [payload]
    length = global_max(len(payload))
    buf = np.zeros(length, np.uint8)
    buf[: len(payload)] = np.frombuffer(payload, np.uint8)
    lengths = multihost_utils.process_allgather(np.asarray(len(payload), np.int64))
    bufs = multihost_utils.process_allgather(buf)
    return [bytes(b[:n]) for b, n in zip(np.asarray(bufs), np.asarray(lengths).ravel(), strict=True)]


def initialize_distributed(coordinator_address: str, num_processes: int, process_id: int, auto: bool) -> None:
    """`jax.distributed.initialize`, explicitly (address, count, id) or auto-detected (SLURM, TPU, MPI)."""
    if coordinator_address:
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise UserError(f"--process_id={process_id} must be in [0, --num_processes={num_processes})")
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id)
    elif auto:
        try:
            jax.distributed.initialize()
        except (ValueError, RuntimeError) as e:
            raise UserError(f"--distributed could not detect a cluster ({e}); pass --coordinator_address, "
                            "--num_processes and --process_id") from e
