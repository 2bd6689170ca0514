"""One process of a multi-host run: `python multihost_worker.py PID NPROC PORT OUT_JSON [DCN]`.

Each process owns 8 / NPROC simulated CPU devices; together they form one (2, 1, 4)
mesh (DCN > 1: the data axis split across processes as the outer, slow-link factor) and
run the same sharded DEQ train step. Process 0 writes loss and gradient
norms to OUT_JSON. With NPROC = 1 it is the single-process reference.
"""
import json
import os
import sys


def main(pid: int, nproc: int, port: int, out: str, dcn: int = 1) -> None:
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={8 // nproc}"
    os.environ["JAX_PLATFORMS"] = "cpu"
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import jax

    if nproc > 1:
        jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=nproc,
                                   process_id=pid, initialization_timeout=120)
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from deqdist.parallel import ParallelConfig, batch_sharding, make_mesh, make_solve, param_shardings
    from harness import deq_cfg, loss_fn, model_and_tokens

    assert jax.device_count() == 8 and jax.process_count() == nproc
    model, tokens = model_and_tokens()
    pc = ParallelConfig(2, 1, 4, dcn_data=dcn)
    mesh = make_mesh(pc)
    graphdef, state = nnx.split(model)
    shardings = param_shardings(state, mesh, pc)
    cfg = deq_cfg("broyden")
    solve = make_solve(mesh, pc)

    def put(a, sh):  # every process holds the same full value; each keeps its own shards
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, sh, lambda idx: a[idx])

    def step(state, tokens):
        m = nnx.merge(graphdef, state)
        (loss, _), grads = nnx.value_and_grad(loss_fn, has_aux=True)(m, tokens, cfg, solve)
        norms = jax.tree.map(lambda g: jnp.sqrt(jnp.sum(g * g)), grads)
        return loss, optax_global_norm(grads), norms

    def optax_global_norm(tree):
        return jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree.leaves(tree)))

    if dcn > 1:  # each process's devices form one inner (data/dcn, fsdp, tensor) block
        procs = np.vectorize(lambda d: d.process_index)(mesh.devices)
        assert all(len(set(procs[i].ravel())) == 1 for i in range(dcn)), procs
    with jax.set_mesh(mesh):
        state = jax.tree.map(put, state, shardings)
        tokens = put(tokens, batch_sharding(mesh, pc))
        loss, gnorm, norms = jax.jit(step)(state, tokens)
        result = {"loss": float(loss), "grad_norm": float(gnorm),
                  "leaf_norms": [float(x) for x in jax.tree.leaves(norms)]}
    if pid == 0:
        with open(out, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], *map(int, sys.argv[5:]))
