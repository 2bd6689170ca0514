"""Per-replica stopping: data/fsdp replicas run only as many solver iterations as their own
samples need, and share nothing inside the solver loop.

Half of the batch is easy (injection scaled up: f contracts strongly) and half is hard
(scaled down), so replicas need very different iteration counts. Per mesh:
each replica's forward and backward loop iterations equal those of its samples solved
alone on one device; z* and the gradients equal the single-device solve of the whole
batch; and every collective inside the compiled solver loops stays within one replica
(its group spans only the `seq` axis), so replicas cannot wait on each other.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deqdist.deq import DEQConfig, backward_sink
from deqdist.model import local_solve
from deqdist.parallel import ParallelConfig, make_mesh, make_solve
from deqdist.parallel.hlo import solver_loop_groups
from deqdist.solvers import SolverConfig
from deqdist.solvers.broyden import history_shape
from harness import max_rel_err, model_and_tokens

B, S = 8, 32
SCALES = [4.0] * 4 + [0.3] * 4
CFG = DEQConfig(fwd=SolverConfig(max_iter=40, tol=1e-4), bwd=SolverConfig(max_iter=40, tol=1e-4))


@pytest.fixture(scope="module")
def problem():
    model, tokens = model_and_tokens(B, S)
    f, params = model.split_block()
    x = model.inject(tokens)
    x = dict(x, inj=x["inj"] * jnp.asarray(SCALES)[:, None, None])
    z0 = model.z0(tokens)
    w = jax.random.normal(jax.random.key(7), z0.shape)
    return f, params, x, z0, w


def _grad_fn(solve, f, z0, w):
    def loss(params, x, w, sink):
        z, st = solve(f, params, x, z0, CFG, sink)
        return jnp.sum(z * w), (z, st)

    return jax.jit(jax.grad(loss, argnums=(0, 1, 3), has_aux=True))


@pytest.fixture(scope="module")
def alone(problem):
    """Single-device solves of the samples of every block of 8, 4, 2 and 1 rows on their own.

    A block's rows are repeated to fill the batch, so every solve runs the same compiled
    program (whose per-row arithmetic does not depend on the other rows); a smaller batch
    would compile differently, and last-bit differences can move a residual across tol.
    """
    f, params, x, z0, w = problem
    fn = _grad_fn(local_solve, f, z0, w)
    out = {}
    for n in (B, 4, 2, 1):
        for lo in range(0, B, n):
            rows = lo + np.arange(B) % n
            pick = lambda a: jax.tree.map(lambda v: v[rows], a)
            (gp, gx, sink), (z, st) = fn(params, pick(x), pick(w), backward_sink(B))
            out[lo, n] = dict(gp=gp, gx=gx, z=z, fwd=st, bwd=sink)
    return out


def _sharded(problem, sizes, lockstep):
    f, params, x, z0, w = problem
    pc = ParallelConfig(*sizes, lockstep=lockstep)
    mesh = make_mesh(pc)
    with jax.set_mesh(mesh):
        compiled = _grad_fn(make_solve(mesh, pc), f, z0, w).lower(params, x, w, backward_sink(B)).compile()
        (gp, gx, sink), (z, st) = compiled(params, x, w, backward_sink(B))
    return dict(gp=gp, gx=gx, z=z, fwd=st, bwd=sink), compiled.as_text(), mesh


def _replica_of(mesh):
    """Device id -> its (data, fsdp) coordinate: the replica it belongs to."""
    names = mesh.axis_names
    return {d.id: tuple(i for a, i in zip(names, idx) if a != "tensor") for idx, d in np.ndenumerate(mesh.devices)}


def _loop_groups(hlo, sizes):
    data, fsdp, tensor = sizes
    loops = solver_loop_groups(hlo, history_shape(B // (data * fsdp), S // tensor * 64, CFG.fwd))
    assert len(loops) >= 2  # forward and backward solve (+ blocked passes nested inside them)
    return [g for loop in loops for g in loop]


@pytest.mark.parametrize("sizes", [(2, 1, 4), (4, 1, 2), (8, 1, 1)])
def test_each_replica_iterates_as_if_alone(problem, alone, sizes):
    out, hlo, mesh = _sharded(problem, sizes, "sample")
    n = B // (sizes[0] * sizes[1])
    full = alone[0, B]
    fwd_iters, bwd_iters = [], []
    for lo in range(0, B, n):
        ref = alone[lo, n]
        # The loop count of one replica is that of its samples solved on their own.
        assert np.all(np.asarray(out["fwd"].loop_iters[lo:lo + n]) == int(ref["fwd"].loop_iters[0]))
        assert np.all(np.asarray(out["bwd"]["loop_iters"][lo:lo + n]) == float(ref["bwd"]["loop_iters"][0]))
        fwd_iters.append(int(ref["fwd"].loop_iters[0]))
        bwd_iters.append(float(ref["bwd"]["loop_iters"][0]))
    # The batch really is uneven, so lockstep would have cost something.
    assert max(fwd_iters) >= 3 * min(fwd_iters) and max(bwd_iters) >= 3 * min(bwd_iters)
    assert int(full["fwd"].loop_iters[0]) == max(fwd_iters)

    # Results are those of the single-device solve of the whole batch.
    assert jnp.array_equal(out["fwd"].nstep, full["fwd"].nstep)
    assert jnp.array_equal(out["bwd"]["nstep"], full["bwd"]["nstep"])
    assert bool(out["fwd"].converged.all()) and bool((out["bwd"]["converged"] > 0).all())
    assert max_rel_err(out["z"], full["z"]) <= 1e-5
    assert max_rel_err(out["gp"], full["gp"]) <= 5e-5
    assert max_rel_err(out["gx"], full["gx"]) <= 5e-5

    # Nothing inside the compiled solver loops crosses replicas.
    replica = _replica_of(mesh)
    groups = _loop_groups(hlo, sizes)
    assert groups or sizes[2] == 1
    assert all(g and len({replica[d] for d in g}) == 1 for g in groups), groups


def test_global_lockstep_runs_the_global_maximum(problem, alone):
    sizes = (4, 1, 2)
    out, hlo, mesh = _sharded(problem, sizes, "global")
    full = alone[0, B]
    assert np.all(np.asarray(out["fwd"].loop_iters) == int(full["fwd"].loop_iters[0]))
    assert np.all(np.asarray(out["bwd"]["loop_iters"]) == float(full["bwd"]["loop_iters"][0]))
    assert jnp.array_equal(out["fwd"].nstep, full["fwd"].nstep)
    assert max_rel_err(out["z"], full["z"]) <= 1e-5
    # The stop test now spans every replica: the inspector sees it.
    replica = _replica_of(mesh)
    assert any(not g or len({replica[d] for d in g}) > 1 for g in _loop_groups(hlo, sizes))


@pytest.mark.parametrize("value,expected", [(True, "global"), (False, "sample"), ("true", "global"),
                                            ("false", "sample"), ("global", "global")])
def test_lockstep_accepts_old_booleans(value, expected):
    assert ParallelConfig(lockstep=value).validate().lockstep == expected


def test_lockstep_rejects_unknown_value():
    with pytest.raises(ValueError, match="parallel.lockstep must be one of sample, global"):
        ParallelConfig(lockstep="replica").validate()
