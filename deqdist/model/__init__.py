"""The DEQ-Transformer in Flax NNX: block f, injection, embedding, head, explicit twin."""
from deqdist.model.block import (
    WEIGHT_NORM_AXES,
    DEQBlock,
    block_fn,
    cast_floating,
    prepare_block_params,
    weight_normalise,
)
from deqdist.model.collectives import LOCAL, Collectives
from deqdist.model.config import ModelConfig
from deqdist.model.hooks import EquilibriumFn, EquilibriumSolve, SolveHooks, Unroll, local_solve, local_unroll
from deqdist.model.layers import LOGICAL_AXES, LayerNorm, rope
from deqdist.model.transformer import DEQTransformer, block_params_and_specs, lm_loss, logical_specs, param_count

__all__ = [
    "LOCAL", "LOGICAL_AXES", "WEIGHT_NORM_AXES", "Collectives", "DEQBlock", "DEQTransformer",
    "EquilibriumFn", "EquilibriumSolve", "LayerNorm", "ModelConfig", "SolveHooks", "Unroll", "block_fn",
    "block_params_and_specs", "cast_floating", "lm_loss", "local_solve", "local_unroll",
    "logical_specs", "param_count", "prepare_block_params", "rope", "weight_normalise",
]
