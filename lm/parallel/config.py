"""MeshConfig: `config.mesh`, how a run's devices form a mesh and which logical axes each mesh axis splits."""

import dataclasses

from lm.axes import DEFAULT_RULES, MESH_AXES, Rules
from lm.section import key, require


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh axis sizes (their product is the device count; one may be -1: the rest) and the rules in force."""

    data: int = key(-1, "splits the batch; one axis size may be -1: the rest of the devices")
    fsdp: int = key(1, "splits the batch and every parameter")
    tensor: int = key(1, "splits heads, MLP width and vocabulary")
    rules: Rules = key(DEFAULT_RULES, "logical axis name -> mesh axes (lm/parallel/mesh.py)")
    cpu_devices: int = key(1, "JAX devices a CPU host is split into (0: one per core); small models train faster "
                              "so")

    def __post_init__(self) -> None:
        sizes = [getattr(self, a) for a in MESH_AXES]
        require(sizes.count(-1) <= 1 and all(s > 0 or s == -1 for s in sizes),
                f"config.mesh sizes ({self.describe()}) must be positive, with at most one -1")
        require(self.cpu_devices >= 0,
                f"config.mesh.cpu_devices must be >= 0 (0: one per core), got {self.cpu_devices}")

    def describe(self) -> str:
        return ", ".join(f"{a}={getattr(self, a)}" for a in MESH_AXES)
