"""One process of a multi-host run: `python multihost_worker.py PID NPROC PORT OUT_JSON [DCN]`.

Each process owns 8 / NPROC simulated CPU devices; together they form one (2, 1, 4)
mesh (DCN > 1: the data axis split across processes as the outer, slow-link factor) and
run the trainer's gradient step (deqdist.train.step) on it. Process 0 writes loss and gradient
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

    from deqdist.train.step import Steps
    from harness import config, deq_cfg, model_and_tokens, params_and_batch

    assert jax.device_count() == 8 and jax.process_count() == nproc
    model, tokens = model_and_tokens()
    steps = Steps.for_config(config(deq_cfg("broyden"), (2, 1, 4), dcn=dcn))
    mesh = steps.spec.mesh

    def put(a, sh):  # every process holds the same full value; each keeps its own shards
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, sh, lambda idx: a[idx])

    def norms(loss, grads, aux):
        leaf_norms = jax.tree.map(lambda g: jnp.sqrt(jnp.sum(g * g)), grads)
        return loss, jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(grads))), leaf_norms

    if dcn > 1:  # each process's devices form one inner (data/dcn, fsdp, tensor) block
        procs = np.vectorize(lambda d: d.process_index)(mesh.devices)
        assert all(len(set(procs[i].ravel())) == 1 for i in range(dcn)), procs
    params, batch = params_and_batch(model, tokens)
    params = jax.tree.map(put, params, steps.spec.shardings["params"])
    batch = jax.tree.map(lambda a: put(a, steps.batch_sharding), batch)
    loss, gnorm, leaf_norms = jax.jit(lambda p, b: norms(*steps.gradients()(p, b)))(params, batch)
    result = {"loss": float(loss), "grad_norm": float(gnorm),
              "leaf_norms": [float(x) for x in jax.tree.leaves(leaf_norms)]}
    if pid == 0:
        with open(out, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], *map(int, sys.argv[5:]))
