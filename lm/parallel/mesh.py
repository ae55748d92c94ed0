"""Device mesh, and the rules (config data) that map the model's logical axis names (lm/axes.py) onto it.

Mesh axes: `data` splits the batch and replicates the model; `fsdp` splits the batch and also shards every
parameter and its optimizer state (gathered just in time for each layer); `tensor` splits attention heads,
the MLP width and the vocabulary inside each layer. The rules map each logical name onto mesh axes, in order
of precedence, so data-, fully-sharded- and tensor-parallel layouts are a matter of mesh sizes, not code.
"""

import contextlib
import dataclasses
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from lm import section
from lm.axes import BATCH, LENGTH, MESH_AXES, Rules
from lm.errors import UserError
from lm.parallel.config import MeshConfig


def as_rules(rules: Sequence[Sequence[Any]]) -> Rules:
    """Rules from config data (lists from JSON become tuples)."""
    def axes(a: Any) -> Any:
        return tuple(a) if isinstance(a, (list, tuple)) else a

    try:
        return tuple((str(name), axes(a)) for name, a in rules)
    except (TypeError, ValueError) as e:
        raise UserError(f"config.mesh.rules must be pairs (logical name, mesh axis or axes or None): {e}") from e


def mesh_shape(sizes: MeshConfig, num_devices: int) -> tuple[int, ...]:
    """Mesh axis sizes in MESH_AXES order, a -1 replaced by the rest of the devices."""
    shape = [getattr(sizes, a) for a in MESH_AXES]
    fixed = int(np.prod([s for s in shape if s != -1]))
    if -1 in shape:
        if num_devices % fixed:
            raise UserError(f"config.mesh ({sizes.describe()}) does not divide the {num_devices} devices")
        shape[shape.index(-1)] = num_devices // fixed
    if int(np.prod(shape)) != num_devices:
        raise UserError(f"config.mesh ({sizes.describe()}) needs {int(np.prod(shape))} devices but {num_devices} are "
                        "present; make the product of the sizes equal the device count (or set one size to -1)")
    return tuple(shape)


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

    def describe(self) -> str:
        sizes = ", ".join(f"{a}={n}" for a, n in self.mesh.shape.items())
        rules = ", ".join(f"{name}->{axes}" for name, axes in self.rules if axes is not None)
        n = self.mesh.size
        return (f"mesh ({sizes}) over {n} device{'s' * (n != 1)} in {jax.process_count()} process(es); "
                f"rules: {rules}")

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


def make_layout(sizes: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Layout:
    """The layout of `config.mesh` (axis sizes and rules) over all devices, or over `devices`."""
    devices = list(devices if devices is not None else jax.devices())
    shape = mesh_shape(sizes, len(devices))
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    mesh = jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)
    return Layout(mesh, as_rules(sizes.rules))


def run_layout(run: dict[str, Any]) -> Layout:
    """The layout of a saved run config's `mesh`; one device for a workdir without one (imported weights)."""
    if "mesh" in run:
        return make_layout(section.from_dict(MeshConfig, run["mesh"]))
    return tensor_layout(1)


def tensor_layout(tensor: int, flag: str = "--tensor") -> Layout:
    """A mesh that splits the model over `tensor` devices (heads, MLP, vocabulary) for sampling (a CPU host is
    split into that many devices first: lm/backends/cpu_devices.py). `flag` names the option in errors."""
    if tensor < 1:
        raise UserError(f"{flag} must be >= 1 (devices to split the model over), got {tensor}")
    if tensor > jax.device_count():
        raise UserError(f"{flag} {tensor} needs that many devices; this host has {jax.device_count()}")
    return make_layout(MeshConfig(data=1, tensor=tensor), jax.devices()[:tensor])


def bytes_per_device(tree: Any) -> dict[jax.Device, int]:
    """Bytes that each of this process's devices holds of the arrays in `tree`."""
    held: dict[jax.Device, int] = defaultdict(int)
    for x in jax.tree.leaves(tree):
        for shard in x.addressable_shards:
            held[shard.device] += shard.data.nbytes
    return dict(held)


