"""Dot-product FLOPs of a traced program, from its jaxpr, counting every trip of every scan.

XLA's cost_analysis counts a while-loop body once, and a TPU program's dots are rewritten
into convolutions, so neither can show a change in how many tiles blockwise attention's
scans visit. The jaxpr still has each `dot_general` with its shapes and each scan with its
length. Inside `shard_map` the shapes are per device. A `while_loop` (a solver) has no
static trip count: it counts one iteration, as cost_analysis does.
"""
from __future__ import annotations

import math

from jax.extend import core


def _dot(eqn) -> float:
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    return 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contract)


def _jaxprs(value) -> list:
    if isinstance(value, core.ClosedJaxpr):
        return [value.jaxpr]
    if isinstance(value, core.Jaxpr):
        return [value]
    if isinstance(value, (tuple, list)):
        return [j for v in value for j in _jaxprs(v)]
    return []


def dot_flops(jaxpr, scope: str | None = None, *, _inside: bool = False) -> float:
    """FLOPs (2 per multiply-add) of the `dot_general`s one run of `jaxpr` executes; with
    `scope`, only those under a `jax.named_scope(scope)` (forward, its JVP and transpose)."""
    jaxpr = jaxpr.jaxpr if isinstance(jaxpr, core.ClosedJaxpr) else jaxpr
    total = 0.0
    for eqn in jaxpr.eqns:
        inside = _inside or scope is None or scope in str(eqn.source_info.name_stack)
        name = eqn.primitive.name
        if name == "dot_general":
            total += _dot(eqn) if inside else 0.0
        elif name == "cond":  # one branch runs: count the dearest
            total += max(dot_flops(j, scope, _inside=inside) for j in _jaxprs(eqn.params["branches"]))
        else:
            trips = eqn.params["length"] if name == "scan" else 1
            subs = [j for k, v in eqn.params.items() if k != "cond_jaxpr" for j in _jaxprs(v)]
            total += trips * sum(dot_flops(j, scope, _inside=inside) for j in subs)
    return total
