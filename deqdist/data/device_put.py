"""Host batch (numpy, this process's rows) -> global jax.Array on a mesh.

Each process holds a contiguous block of rows of the global batch (see
pipeline.py); `jax.make_array_from_process_local_data` stitches the blocks
into one array sharded as asked. The sharding comes from parallel/, so this
module knows no mesh axis names.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np

from deqdist.data.errors import DataError
from deqdist.parallel.mesh import check_divisible


def to_global(
    batch: Mapping[str, np.ndarray],
    sharding: jax.sharding.NamedSharding | Mapping[str, jax.sharding.NamedSharding],
    *,
    process_count: int | None = None,
) -> dict[str, Any]:
    """Make each entry (per-host rows) a global jax.Array with `sharding`.

    `sharding` is one NamedSharding for all entries or one per key. The global
    batch is per-host rows * process_count, matching the pipeline's per-host
    split (pass process_count only to override jax.process_count()).
    """
    pc = jax.process_count() if process_count is None else process_count
    out = {}
    for name, local in batch.items():
        local = np.asarray(local)
        s = sharding[name] if isinstance(sharding, Mapping) else sharding
        global_shape = (local.shape[0] * pc, *local.shape[1:])
        try:
            # make_array_from_process_local_data's own message for this config mistake is opaque.
            check_divisible(global_shape, s, f"batch entry {name!r}", "; change the global batch size or seq_len")
        except ValueError as e:
            raise DataError(str(e)) from None
        out[name] = jax.make_array_from_process_local_data(s, local, global_shape)
    return out
