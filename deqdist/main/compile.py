"""`deqdist compile`: compile the real train steps for a TPU slice you do not have.

libtpu describes any TPU topology (e.g. `v5p:2x2x2`) as abstract devices on a
CPU-only host. The trainer's own mesh, abstract train state and jitted steps
(`Steps.for_config`) are built over those devices and lowered with sharded
ShapeDtypeStructs, so nothing is allocated; XLA's TPU compiler then reports
per-device memory and FLOPs, and refuses (RESOURCE_EXHAUSTED) a program that
would not fit in HBM.

Variants: the explicit warm-up (train.n_unroll applications), the DEQ step,
the DEQ step with the Jacobian term, and the explicit twin at 12 and 24
applications for comparison. Exit codes: 0 every step this config trains
with fits; EXIT_DOES_NOT_FIT (5) one of them does not (one line on stderr);
2 bad input (unknown topology, a mesh that does not match its device count).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from deqdist.main.args import CONFIG_HELP, add_overrides
from deqdist.report import table
from deqdist.store.atomic import write_atomic
from deqdist.typed_config import ConfigError

if TYPE_CHECKING:
    from deqdist.config import Config
    from deqdist.train.step import Steps

EXIT_DOES_NOT_FIT = 5
VARIANTS = ("warmup", "deq", "deq+jac", "twin12", "twin24")
GiB = 2**30
# HBM per chip (vendor specifications); a chip with two visible cores splits it between them.
HBM_PER_CHIP_GIB = {"TPU v4": 32, "TPU v5 lite": 16, "TPU v5": 95, "TPU v6 lite": 32, "TPU7x": 192}


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 (libtpu's C++ start-up logging about the missing TPU VM metadata)."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def topology_devices(name: str, slices: int = 1) -> list:
    """The abstract devices of `slices` slices of TPU topology `name` (ConfigError if unknown)."""
    import jax

    if slices < 1:
        raise ConfigError(f"--slices must be a positive integer, got {slices}")
    # Off a TPU VM, libtpu must not ask the cloud metadata server what hardware it runs on; and
    # compiling opens no TPU, so libtpu's one-process-per-host lock (/tmp/libtpu_lockfile) would
    # only stop two compiles (or test workers) from running at once.
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        import libtpu  # noqa: F401
    except ImportError:
        raise ConfigError("`deqdist compile` needs libtpu: pip install 'deqdist[tpu]'") from None
    from jax.experimental import topologies

    try:
        with _quiet_stderr():
            return list(topologies.get_topology_desc(platform="tpu", topology_name=name, num_slices=slices).devices)
    except jax.errors.JaxRuntimeError as e:
        why = str(e).splitlines()[0].split(": ", 1)[-1]
        raise ConfigError(f"unknown TPU topology {name!r} ({why}); use a name like v5p:2x2x2, v5e:4x4, "
                          f"v6e:8x8 or v4:2x2x2") from None


def hbm_per_device(devices: Sequence) -> int | None:
    per_chip = HBM_PER_CHIP_GIB.get(devices[0].device_kind)
    if per_chip is None:
        return None
    cores = Counter((d.process_index, tuple(d.coords)) for d in devices)
    return per_chip * GiB // max(cores.values())


@dataclasses.dataclass
class Variant:
    name: str
    mode: str
    jac: bool
    n_unroll: int
    trained: bool  # does training with this config run this step?


def variants(cfg: Config, wanted: Sequence[str]) -> list[Variant]:
    t = cfg.train
    jac_on = t.jac_reg_every > 0 and t.jac_reg_weight > 0
    deq_phase = t.warmup_explicit_steps < t.steps
    # Reversible training runs its coupled iteration where the DEQ would solve: same step, own name.
    solve = (f"reversible n={cfg.solver.reversible.steps}" if cfg.solver.grad == "reversible" else "deq")
    every = {
        "warmup": Variant(f"explicit x{t.n_unroll} (warm-up)", "explicit", False, t.n_unroll,
                          t.warmup_explicit_steps > 0),
        "deq": Variant(solve, "deq", False, t.n_unroll, deq_phase and (not jac_on or t.jac_reg_every > 1)),
        "deq+jac": Variant(f"{solve} + jacobian term", "deq", True, t.n_unroll, deq_phase and jac_on),
        "twin12": Variant("explicit twin x12", "explicit", False, 12, False),
        "twin24": Variant("explicit twin x24", "explicit", False, 24, False),
    }
    return [every[w] for w in wanted]


def _shard_bytes(abstract: Any, shardings: Any) -> int:
    import jax

    return sum(math.prod(s.shard_shape(a.shape)) * a.dtype.itemsize
               for a, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)))


def _loop_collectives(hlo: str, shapes: Sequence[tuple[int, ...]]) -> list[dict[str, int]]:
    from deqdist.parallel.hlo import solver_loops

    for shape in shapes:
        loops = solver_loops(hlo, shape)
        if loops:
            return [dict(sorted(c.items())) for c in loops]
    return []


def compile_variant(steps: Steps, v: Variant) -> dict:
    """Lower and compile one train step for the mesh's devices; its per-device memory, FLOPs, loops."""
    import jax

    from deqdist.parallel.flops import dot_flops

    cfg, spec = steps.cfg, steps.spec
    state = spec.abstract_for_restore()
    row = {"variant": v.name, "trained": v.trained, "n_unroll": v.n_unroll if v.mode == "explicit" else None}
    try:
        traced = steps.variant(v.mode, v.jac).trace(state, steps.abstract_batch())
        compiled = traced.lower().compile()
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        return {**row, "fits": False, "compiler": str(e).splitlines()[0]}
    state_sh = compiled.input_shardings[0][0]
    mem, cost = compiled.memory_analysis(), compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    hlo = compiled.as_text()
    total = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
             + mem.temp_size_in_bytes + mem.generated_code_size_in_bytes)
    mesh = spec.mesh
    bl = cfg.data.global_batch_size // (mesh.shape["data"] * mesh.shape["fsdp"])
    sl, d = cfg.model.seq_len // mesh.shape["tensor"], cfg.model.d_model
    return {
        **row, "fits": True,
        "params_bytes": _shard_bytes(spec.abstract["params"], state_sh["params"]),
        "opt_state_bytes": _shard_bytes(spec.abstract["opt_state"], state_sh["opt_state"]),
        "argument_bytes": mem.argument_size_in_bytes,
        "output_bytes": mem.output_size_in_bytes - mem.alias_size_in_bytes,
        "temp_bytes": mem.temp_size_in_bytes,
        "code_bytes": mem.generated_code_size_in_bytes,
        "total_bytes": total,
        "flops": float(cost.get("flops", float("nan"))),
        # Counted per trip of every scan (blockwise attention's tiles), one iteration of a solver loop.
        "attention_flops": dot_flops(traced.jaxpr, "attention"),
        # Solver / scan loops carry z per device as (rows, seq, d) or flattened (rows, seq * d).
        "loop_collectives": _loop_collectives(hlo, [(bl, sl, d), (bl, sl * d)]),
    }


def compile_report(cfg: Config, topology: str, slices: int, wanted: Sequence[str]) -> dict:
    from deqdist.train.step import Steps

    devices = topology_devices(topology, slices)
    hbm = hbm_per_device(devices)
    built: dict[int, Steps] = {}
    done: dict[tuple, dict] = {}
    rows = []
    for v in variants(cfg, wanted):
        if v.n_unroll not in built:
            c = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, n_unroll=v.n_unroll))
            built[v.n_unroll] = Steps.for_config(c, devices)
        key = (v.mode, v.jac, v.n_unroll if v.mode == "explicit" else None)
        if key in done:  # the warm-up is the twin at train.n_unroll: one program
            rows.append({**done[key], "variant": v.name, "trained": v.trained})
            continue
        row = done[key] = compile_variant(built[v.n_unroll], v)
        if row["fits"] and hbm is not None:
            row["headroom_bytes"] = hbm - row["total_bytes"]
            row["fits"] = row["headroom_bytes"] >= 0
        rows.append(row)
    mesh = next(iter(built.values())).spec.mesh
    return {
        "topology": topology, "slices": slices, "devices": len(devices), "device_kind": devices[0].device_kind,
        "hbm_bytes_per_device": hbm, "mesh": dict(mesh.shape), "model": dataclasses.asdict(cfg.model),
        "global_batch_size": cfg.data.global_batch_size, "seq_len": cfg.model.seq_len, "variants": rows,
    }


def _gib(b) -> str:
    return "-" if b is None else f"{b / GiB:.2f}"


def _mib(b) -> str:
    return "-" if b is None else f"{b / 2**20:.1f}"


def _loops(row: dict) -> str:
    loops = row.get("loop_collectives") or []
    return " / ".join(",".join(f"{k}:{n}" for k, n in c.items()) for c in loops) or "-"


def format_report(r: dict) -> str:
    m = r["mesh"]
    head = (f"{r['topology']} x{r['slices']} slice(s): {r['devices']} x {r['device_kind']}, "
            f"HBM {_gib(r['hbm_bytes_per_device'])} GiB per device; mesh data={m['data']} fsdp={m['fsdp']} "
            f"tensor={m['tensor']}; global batch {r['global_batch_size']}, seq {r['seq_len']}, "
            f"d_model {r['model']['d_model']}\n"
            "MiB per device. FLOPs per step count each while-loop body once (one solver iteration, "
            "one application); attention GFLOP counts the dot products of every tile of "
            "blockwise attention's scans (from the jaxpr; one solver iteration). Collectives: per iteration of each loop that carries z "
            "(DEQ: forward / backward solve; twin: forward / backward scan).\n\n")
    cols = ["step", "trained", "params", "opt state", "args (compiled)", "temp", "code", "total",
            "headroom", "GFLOP", "attention GFLOP", "fits", "collectives per loop iteration"]
    rows = []
    for v in r["variants"]:
        if "total_bytes" not in v:
            rows.append([v["variant"], "yes" if v["trained"] else "no", *["-"] * 9, "NO", v["compiler"]])
            continue
        rows.append([v["variant"], "yes" if v["trained"] else "no", _mib(v["params_bytes"]),
                     _mib(v["opt_state_bytes"]), _mib(v["argument_bytes"]), _mib(v["temp_bytes"]),
                     _mib(v["code_bytes"]), _mib(v["total_bytes"]), _mib(v.get("headroom_bytes")),
                     f"{v['flops'] / 1e9:.1f}", f"{v['attention_flops'] / 1e9:.1f}" if v.get("attention_flops") else "-", "yes" if v["fits"] else "NO", _loops(v)])
    return head + table(cols, rows)


def parse_variants(text: str | None) -> list[str]:
    if text is None:
        return list(VARIANTS)
    wanted = [w.strip() for w in text.split(",") if w.strip()]
    bad = [w for w in wanted if w not in VARIANTS]
    if bad or not wanted:
        raise ConfigError(f"--variants {text!r}: use a comma-separated subset of {','.join(VARIANTS)}")
    return wanted


def add_parser(commands) -> None:
    p = commands.add_parser("compile", help="compile the train steps for a TPU slice you do not have: does the "
                            "config fit?", description="Compile the real train steps ahead of time for a TPU "
                            "topology (no TPU needed; needs libtpu: pip install 'deqdist[tpu]') and report "
                            "per-device memory, FLOPs and collectives. Exit 0: fits; 5: a step this config trains "
                            "does not fit; 2: bad input.")
    p.add_argument("--topology", required=True, metavar="NAME", help="libtpu topology name, e.g. v5p:2x2x2, "
                   "v5e:4x4, v6e:8x8, v4:2x2x2")
    p.add_argument("--slices", type=int, default=1, metavar="N", help="number of slices (multi-slice over DCN; "
                   "set parallel.dcn_data to N or a multiple)")
    p.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    p.add_argument("--variants", metavar="LIST", help="comma-separated subset of warmup,deq,deq+jac,twin12,twin24 "
                   "(default: all)")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    add_overrides(p)
    p.set_defaults(run=run)


def run(args) -> int:
    return run_compile(args.config, args.overrides, topology=args.topology, slices=args.slices,
                       variants_text=args.variants, json_path=args.json)


def run_compile(config_path: str | None, overrides: Sequence[str], *, topology: str, slices: int = 1,
                variants_text: str | None = None, json_path: str | None = None) -> int:
    # Everything runs on the host's CPU; the TPU is only a compilation target (on a TPU VM this
    # leaves the chips to the trainer).
    import jax

    from deqdist.config import load_config

    jax.config.update("jax_platforms", "cpu")
    cfg = load_config(config_path, overrides)
    wanted = parse_variants(variants_text)
    report = compile_report(cfg, topology, slices, wanted)
    print(format_report(report), flush=True)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(Path(json_path), json.dumps(report, indent=1))
    over = [v for v in report["variants"] if v["trained"] and not v["fits"]]
    if over:
        v = over[0]
        need = (f"needs {_gib(v['total_bytes'])} of {_gib(report['hbm_bytes_per_device'])} GiB per device"
                if "total_bytes" in v else re.sub(r"\s+", " ", v["compiler"]))
        m = report["mesh"]
        print(f"deqdist compile: does not fit: the {v['variant']} step {need} on {topology} x{slices} "
              f"(mesh {m['data']}x{m['fsdp']}x{m['tensor']}); shard more (parallel.fsdp / parallel.tensor), "
              f"a smaller data.global_batch_size or model.seq_len, or a larger slice", file=sys.stderr)
        return EXIT_DOES_NOT_FIT
    return 0
