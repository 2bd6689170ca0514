"""`deqdist compile`: the real train step compiled for a v5p slice on this CPU host (needs libtpu).

The per-device parameter and AdamW bytes that the TPU program was compiled with must
equal the sharded sizes of the trainer's own state layout on a CPU mesh of the same
shape; bad topologies and meshes are exit 2 with one line, a step too big for HBM exit 5.
"""
import importlib.util
import json
import math
import re
import subprocess

import jax
import pytest
from trainutil import MESH_2_1_4, MESH_8_1_1, cli_cmd, cli_env

from deqdist.config import load_config
from deqdist.train.mesh import build_mesh
from deqdist.train.state import state_spec

pytestmark = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                reason="libtpu is not installed (pip install 'deqdist[tpu]')")

TOPOLOGY = "v5p:2x2x2"  # 8 chips, one device (megacore) each
# tensor=4 splits the heads; without the Jacobian term the DEQ step is the one trained (and compiles faster).
TINY = ["model.n_heads=4", "train.jac_reg_every=0"]


def _compile(tmp_path, *args, name="report.json"):
    out = tmp_path / name
    p = subprocess.run(cli_cmd("compile", "--topology", TOPOLOGY, *args, "--json", out), env=cli_env(),
                       capture_output=True, text=True, timeout=900)
    return p, out


def _cpu_bytes(overrides):
    """Per-device bytes of params and of the AdamW state on the 8 simulated CPU devices."""
    spec = state_spec(load_config(None, overrides), build_mesh(load_config(None, overrides)))

    def per_device(part):
        return sum(math.prod(s.shard_shape(a.shape)) * a.dtype.itemsize for a, s in
                   zip(jax.tree.leaves(spec.abstract[part]), jax.tree.leaves(spec.shardings[part])))

    return per_device("params"), per_device("opt_state")


# The sequence-parallel mesh also takes the blockwise attention (its scan inside the shard_map'd solve).
@pytest.mark.parametrize("mesh", [MESH_8_1_1, [*MESH_2_1_4, "model.attention_block=16"]],
                         ids=["8x1x1", "2x1x4-blockwise-attention"])
def test_tiny_compiles_for_v5p_with_the_cpu_layout(tmp_path, mesh):
    overrides = [*mesh, *TINY]
    p, out = _compile(tmp_path, "--variants", "deq", *overrides)
    assert p.returncode == 0, p.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["devices"] == 8 and report["mesh"] == dict(zip(("data", "fsdp", "tensor"),
                                                                 (int(o.split("=")[1]) for o in mesh[:3])))
    (row,) = report["variants"]
    assert row["fits"] and row["trained"]
    params, opt = _cpu_bytes(overrides)
    assert (row["params_bytes"], row["opt_state_bytes"]) == (params, opt)
    # The compiled program's arguments hold at least the state (TPU layouts may pad small arrays).
    assert row["argument_bytes"] >= params + opt
    assert row["temp_bytes"] > 0 and row["code_bytes"] > 0 and row["flops"] > 0
    # Blockwise attention's dot products, every tile of its scans; dense attention is not counted.
    assert (row["attention_flops"] > 0) == any(o.startswith("model.attention_block") for o in mesh)
    # Forward and backward solve loops: only a sequence split (tensor > 1) gathers and scatters inside them;
    # a pure data-parallel replica stops on its own samples (parallel.lockstep=sample) and exchanges nothing.
    if dict(report["mesh"])["tensor"] > 1:
        assert len(row["loop_collectives"]) >= 2
        assert all("all-gather" in c for c in row["loop_collectives"])
    else:
        assert not any(row["loop_collectives"])


def test_the_reversible_mode_names_its_step():
    from deqdist.main.compile import variants

    cfg = load_config(None, ["solver.grad=reversible", "solver.reversible.steps=4"])
    assert [v.name for v in variants(cfg, ["deq", "deq+jac"])] == ["reversible n=4", "reversible n=4 + jacobian term"]
    assert [v.name for v in variants(load_config(None, []), ["deq"])] == ["deq"]


def test_sharding_divides_the_state(tmp_path):
    """The same model on (2,1,4) holds fewer parameter bytes per device than on (8,1,1)."""
    assert _cpu_bytes([*MESH_2_1_4, *TINY])[0] < _cpu_bytes([*MESH_8_1_1, *TINY])[0]


BAD = {
    "not a topology name": (["--topology", "v5p-16"], r"unknown TPU topology 'v5p-16'"),
    "bad layout": (["--topology", "v5p:3x3x3"], r"unknown TPU topology 'v5p:3x3x3'"),
    "mesh mismatch": (["--topology", TOPOLOGY, "parallel.data=2", "parallel.tensor=2"], r"= 4 but there are 8 devices"),
    "dcn mismatch": (["--topology", TOPOLOGY, "--slices", "2", "parallel.data=8", "parallel.fsdp=2",
                      "parallel.dcn_data=4"], r"dcn_data=4 but the devices form 2 slices"),
}


def test_bad_input_is_one_line_exit_2(tmp_path):
    """The cases run as concurrent subprocesses (each fails before compiling anything)."""
    procs = {name: subprocess.Popen(cli_cmd("compile", *args, "--json", tmp_path / f"{i}.json"), env=cli_env(),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i, (name, (args, _)) in enumerate(BAD.items())}
    for i, (name, p) in enumerate(procs.items()):
        _, err = p.communicate(timeout=300)
        lines = err.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1, f"{name}: exit {p.returncode}, stderr {err[-3000:]}"
        assert lines[0].startswith("deqdist compile: error:") and re.search(BAD[name][1], lines[0]), (name, lines[0])
        assert not (tmp_path / f"{i}.json").exists()


def test_too_big_for_hbm_is_exit_5(tmp_path):
    p, out = _compile(tmp_path, "--variants", "deq", *MESH_8_1_1, *TINY, "model.d_model=1024",
                      "model.seq_len=8192", "data.global_batch_size=2048")
    assert p.returncode == 5, p.stderr[-3000:]
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("deqdist compile: does not fit: the deq step"), p.stderr[-3000:]
    (row,) = json.loads(out.read_text())["variants"]
    assert not row["fits"]


def test_a_mesh_that_splits_a_physical_axis_builds(tmp_path):
    """(2,2,4) on a 2x2x4 slice: JAX's topology-aware assignment gives up on it, the mesh still builds."""
    code = ("import json; from deqdist.main.compile import topology_devices; "
            "from deqdist.parallel import ParallelConfig, make_mesh; "
            "m = make_mesh(ParallelConfig(2, 2, 4), topology_devices('v5p:2x2x4')); "
            "print(json.dumps(dict(m.shape)))")
    p = subprocess.run([cli_cmd()[0], "-c", code], env=cli_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads(p.stdout.strip().splitlines()[-1]) == {"data": 2, "fsdp": 2, "tensor": 4}
