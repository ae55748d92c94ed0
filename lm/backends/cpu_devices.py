"""A CPU host split into several JAX devices (`config.mesh.cpu_devices`): small models train faster
data-parallel over single-core devices than with each small op spread over all cores."""

import os
from typing import Any

import jax
import numpy as np

from lm.axes import MESH_AXES


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
    A device count already in XLA_FLAGS (e.g. fake devices in tests) wins; accelerators are unaffected."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    n = cpu_device_count(sizes, batch_size, cores)
    if n > 1 and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        try:
            jax.config.update("jax_num_cpu_devices", n)
        except RuntimeError:  # backends already started (e.g. called in-process): keep their devices
            pass
    return n
