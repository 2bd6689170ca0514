"""The collectives a block needs, passed in as functions.

The model never names mesh axes. `parallel/` builds a `Collectives` whose
functions close over its axis names (e.g. `lax.all_gather(.., "tensor",
axis=1, tiled=True)` and `lax.psum_scatter(.., "tensor", scatter_dimension=1,
tiled=True)`) and hands it to the equilibrium function; unsharded, every
function is the identity.
"""
from __future__ import annotations

import dataclasses
from typing import Callable


def identity(a):
    return a


@dataclasses.dataclass(frozen=True)
class Collectives:
    """Megatron-style sequence-parallel collectives of the block.

    gather_seq:  (B, S_local, D) -> (B, S, D): all-gather along axis 1 (sequence),
                 applied before the attention and MLP input projections.
    scatter_seq: (B, S, D) partial sums -> (B, S_local, D): reduce-scatter along
                 axis 1, applied after the attention and MLP output projections.
    """

    gather_seq: Callable = identity
    scatter_seq: Callable = identity


LOCAL = Collectives()
