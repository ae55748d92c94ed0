"""Multi-process helpers: starting `jax.distributed`, waiting for every process, and small values exchanged
between them (all no-ops with one process)."""

import jax
import numpy as np
from jax.experimental import multihost_utils

from lm.errors import UserError


def sync(name: str) -> None:
    """Waits until every process gets here (no-op with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def global_max(value: int) -> int:
    """The largest `value` over all processes."""
    if jax.process_count() == 1:
        return value
    return int(np.max(multihost_utils.process_allgather(np.asarray(value, np.int64))))



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
