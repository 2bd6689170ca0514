"""Device mesh from config: axes (data, fsdp, tensor), Auto axis types, optional DCN factor;
the check that an array splits evenly over the devices of a sharding."""
from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding

from .config import AXES, ParallelConfig


def resolve_sizes(cfg: ParallelConfig, n_devices: int) -> tuple[int, int, int]:
    cfg.validate()
    sizes = [cfg.data, cfg.fsdp, cfg.tensor]
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if n_devices % known:
            raise ValueError(f"mesh sizes data={cfg.data} fsdp={cfg.fsdp} tensor={cfg.tensor}: "
                             f"{n_devices} devices are not divisible by {known}")
        sizes[sizes.index(-1)] = n_devices // known
    if math.prod(sizes) != n_devices:
        raise ValueError(f"mesh data*fsdp*tensor = {sizes[0]}*{sizes[1]}*{sizes[2]} = {math.prod(sizes)} "
                         f"but there are {n_devices} devices; make the product match (or use -1 for one axis)")
    if sizes[0] % cfg.dcn_data:
        raise ValueError(f"parallel.dcn_data={cfg.dcn_data} must divide the data axis size {sizes[0]}")
    return tuple(sizes)


def make_mesh(cfg: ParallelConfig, devices=None) -> Mesh:
    """The (data, fsdp, tensor) mesh over `devices` (default: all devices of all processes)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = resolve_sizes(cfg, len(devices))
    types = (AxisType.Auto,) * len(AXES)
    if cfg.dcn_data == 1:
        return jax.make_mesh(sizes, AXES, axis_types=types, devices=devices)
    # Multi-slice / multi-host: the outer part of `data` runs across groups (slow links),
    # everything else stays inside one group. Multi-slice TPUs group by slice; otherwise
    # (multi-node GPU, CPU) a process is the unit.
    slices = {getattr(d, "slice_index", None) for d in devices}
    group = (lambda d: d.slice_index) if len(slices) > 1 and None not in slices else (lambda d: d.process_index)
    devices.sort(key=lambda d: (group(d), d.id))
    groups = sorted({group(d) for d in devices})
    if len(groups) != cfg.dcn_data:
        raise ValueError(f"parallel.dcn_data={cfg.dcn_data} but the devices form {len(groups)} slices/processes")
    inner = (sizes[0] // cfg.dcn_data, sizes[1], sizes[2])
    arr = np.array(devices, dtype=object).reshape((cfg.dcn_data, *inner)).reshape(sizes)
    return Mesh(arr, AXES, axis_types=types)


def check_divisible(shape: tuple[int, ...], sharding: NamedSharding, what: str, hint: str = "") -> None:
    """Raise a one-line ValueError naming the numbers if a dimension of `shape` does not split
    evenly over the devices `sharding` places it on. `what` names the array, `hint` the fix."""
    mesh = sharding.mesh
    for dim, entry in enumerate(sharding.spec):
        axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
        parts = math.prod(mesh.shape[a] for a in axes)
        if dim < len(shape) and shape[dim] % parts:
            sizes = ", ".join(f"{a}={mesh.shape[a]}" for a in axes)
            raise ValueError(f"{what} dim {dim} has size {shape[dim]}, not divisible by the {parts} devices "
                             f"of mesh axes ({sizes}){hint}")
