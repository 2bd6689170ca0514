"""Parallelism as configuration: mesh sizes and the logical-axis rule table.

Model parameters carry logical names (`vocab`, `embed`, `heads`, `head_dim`, `mlp`);
activations use `batch` and `seq`. `rules` maps each logical name to a mesh axis,
a tuple of mesh axes, or None (replicated). Changing parallelism means changing
this table or the mesh sizes, never model code.
"""
from __future__ import annotations

import dataclasses
from typing import Union

AXES = ("data", "fsdp", "tensor")
MeshAxes = Union[str, tuple[str, ...], None]
LOCKSTEP = ("sample", "global")

DEFAULT_RULES: tuple[tuple[str, MeshAxes], ...] = (
    ("batch", ("data", "fsdp")),
    ("seq", "tensor"),          # sequence parallelism of z, x and the solver state
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
)


@dataclasses.dataclass(frozen=True)
class ParallelConfig:
    """Mesh sizes (-1 = the rest of the devices) and the rule table.

    dcn_data: an outer factor of `data` that crosses slices / hosts (multi-slice TPU or
    multi-node GPU): devices are grouped by slice (or process) before `data` is split.
    lockstep: which devices share the solver's stop test. "sample" (default): only the
    devices that split a sample (the `seq` rule's axes), which must iterate together;
    every data/fsdp replica stops as soon as its own samples have converged. "global":
    every device runs as many iterations as the hardest sample of the global batch.
    Older configs' booleans are read as true -> "global", false -> "sample".
    """

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    dcn_data: int = 1
    rules: tuple[tuple[str, MeshAxes], ...] = DEFAULT_RULES
    lockstep: Union[str, bool] = "sample"

    def __post_init__(self):
        # YAML gives lists; keep the config hashable (it is a static jit argument).
        rules = tuple((str(k), tuple(v) if isinstance(v, list) else v) for k, v in
                      (self.rules.items() if isinstance(self.rules, dict) else self.rules))
        object.__setattr__(self, "rules", rules)
        # Older configs hold a boolean (YAML files) or its spelling (command-line overrides).
        if isinstance(self.lockstep, bool) or self.lockstep in ("true", "false"):
            object.__setattr__(self, "lockstep", "global" if self.lockstep in (True, "true") else "sample")

    def validate(self) -> "ParallelConfig":
        sizes = {"data": self.data, "fsdp": self.fsdp, "tensor": self.tensor}
        if sum(v == -1 for v in sizes.values()) > 1:
            raise ValueError(f"at most one of parallel.data/fsdp/tensor may be -1, got {sizes}")
        for k, v in sizes.items():
            if v == 0 or v < -1:
                raise ValueError(f"parallel.{k} must be a positive size or -1, got {v}")
        if self.lockstep not in LOCKSTEP:
            raise ValueError(f"parallel.lockstep must be one of {', '.join(LOCKSTEP)}, got {self.lockstep!r}")
        if self.dcn_data < 1:
            raise ValueError(f"parallel.dcn_data must be >= 1, got {self.dcn_data}")
        for name, axes in self.rules:
            for a in _as_tuple(axes):
                if a not in AXES:
                    raise ValueError(f"rule {name!r} -> {a!r}: unknown mesh axis; use one of {', '.join(AXES)} or null")
        return self

    def rule(self, name: str | None) -> tuple[str, ...]:
        if name is None:
            return ()
        for k, v in self.rules:
            if k == name:
                return _as_tuple(v)
        raise ValueError(f"logical axis {name!r} has no rule; add it to parallel.rules")


def _as_tuple(axes: MeshAxes) -> tuple[str, ...]:
    if axes is None:
        return ()
    return (axes,) if isinstance(axes, str) else tuple(axes)
