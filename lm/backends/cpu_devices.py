"""A CPU host split into several JAX devices (`config.mesh.cpu_devices`): small models train faster
data-parallel over single-core devices than with each small op spread over all cores."""

import os

import jax
import numpy as np

from lm.axes import MESH_AXES
from lm.parallel.config import MeshConfig


def cpu_device_count(mesh: MeshConfig, batch_size: int, cores: int) -> int:
    """The JAX devices `config.mesh.cpu_devices` asks a host of `cores` cores for; 0 means one per core, as
    many as fit the mesh's fixed axes and divide the batch."""
    if mesh.cpu_devices:
        return mesh.cpu_devices
    shape = [getattr(mesh, a) for a in MESH_AXES]
    fixed = int(np.prod([s for s in shape if s > 0]))
    if -1 not in shape:
        return fixed
    return max([d for d in range(1, cores + 1) if d % fixed == 0 and batch_size % d == 0], default=1)


def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def split_cpu(n: int) -> None:
    """Splits the host CPU into `n` JAX devices before JAX starts its backends. A device count already in
    XLA_FLAGS (e.g. fake devices in tests) wins; accelerators are unaffected."""
    if n > 1 and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        try:
            jax.config.update("jax_num_cpu_devices", n)
        except RuntimeError:  # backends already started (e.g. called in-process): keep their devices
            pass
