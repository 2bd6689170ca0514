"""The `deqdist` command line: argparse subparsers, one per command (`deqdist --help` lists them).

Each command is a pair: `_add_<command>` declares its parser and binds `_<command>`,
which checks what argparse cannot and runs it.

The library judgement for the CLI: argparse subparsers carry the commands, their
help and the usage errors. tyro and draccus build a CLI from the config
dataclasses, but as `--train.lr 3e-4` flags; deqdist's overrides are
`train.lr=3e-4` positionals shared with YAML layering (deqdist.config), which
neither parses.

Bad input (unknown key, wrong type, bad mesh sizes, missing data, a run
directory that does not fit) is a `deqdist.errors.UserError`: `main` prints its
one line on stderr and exits with 2; nothing is written. A multi-process job
that fails (a peer never joins or is lost) exits with 3 and one line; too many
consecutive non-finite steps exit with 4; `compile` exits with 5 when a train
step does not fit the slice.
"""
from __future__ import annotations

import argparse
import ctypes
import importlib
import importlib.util
import inspect
import math
import os
import sys

from deqdist import presets
from deqdist.errors import UserError

BENCHES = ("solvers", "model", "parallel", "generate", "integrity", "lm", "prepare")
OVERRIDES_HELP = "dotted overrides, e.g. solver.max_iter=20 train.steps=100 parallel.tensor=4"
CONFIG_HELP = "YAML config file or preset name (" + ", ".join(presets.names()) + ")"


class UsageError(UserError):
    """A command line that argparse or a command's own checks refuse."""


class _Parser(argparse.ArgumentParser):
    # argparse prints usage and exits on its own; every bad input here is one line and exit 2 instead.
    def error(self, message: str):
        raise UsageError(f"{message}; see `{self.prog} --help`")


def build_parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser (its help lists the commands) and each command's parser by name."""
    top = _Parser(prog="deqdist", description="Deep Equilibrium Transformers on many devices.",
                  epilog="`deqdist COMMAND --help` describes a command.")
    commands = top.add_subparsers(title="commands", metavar="COMMAND", parser_class=_Parser)
    for add in (_add_train, _add_eval, _add_generate, _add_config, _add_info, _add_compile, _add_prepare, _add_bench):
        add(commands)
    return top, commands.choices


def _add_overrides(p: argparse.ArgumentParser, help_text: str = OVERRIDES_HELP) -> None:
    # default=[] keeps argparse from counting the (optional) overrides among the required arguments.
    p.add_argument("overrides", nargs="*", default=[], metavar="key=value", help=help_text)


def _add_distributed(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("multi-host (one process per host)")
    g.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0 (env DEQDIST_COORDINATOR)")
    g.add_argument("--num-processes", type=int, metavar="N", help="number of processes (env DEQDIST_NUM_PROCESSES)")
    g.add_argument("--process-id", type=int, metavar="I", help="this process's index (env DEQDIST_PROCESS_ID)")
    g.add_argument("--distributed", action="store_true",
                   help="call jax.distributed.initialize() and let JAX find the cluster (TPU pods, SLURM)")
    g.add_argument("--init-timeout", type=float, metavar="SECONDS",
                   help="longest wait for the coordinator and every peer (env DEQDIST_INIT_TIMEOUT, default 300)")


def _init_distributed(args) -> None:
    from deqdist.runtime.distributed import maybe_initialize
    from deqdist.runtime.platform import require_backend

    if not maybe_initialize(args.coordinator, args.num_processes, args.process_id, args.distributed,
                            args.init_timeout):
        require_backend()


def _check_utf8(what: str, text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"{what} is not valid UTF-8 text: {text!r}") from None


def _check_args(args) -> None:
    """Text arguments must be UTF-8 (paths too: they are written into the run's files)."""
    for name, value in vars(args).items():
        if isinstance(value, str):
            _check_utf8("the run directory" if name == "run_dir" else "--" + name.replace("_", "-"), value)
        elif isinstance(value, list):
            for v in value:
                if isinstance(v, str):
                    _check_utf8("override", v)


def _add_train(commands) -> None:
    p = commands.add_parser("train", help="train or resume a run",
                            description="Train (or resume) a DEQ-Transformer.")
    p.add_argument("--config", metavar="FILE", help=CONFIG_HELP + "; default: the tiny preset, or RUN_DIR's "
                   "config when resuming")
    p.add_argument("--run-dir", metavar="DIR", help="run directory (default: runs/<config>-<time>); an existing "
                   "one resumes from its latest checkpoint")
    p.add_argument("--stop-after", type=int, metavar="N", help="train at most N steps in this invocation, "
                   "checkpoint and exit 0 (resume later)")
    _add_overrides(p)
    _add_distributed(p)
    p.set_defaults(run=_train)


def _train(args) -> int:
    _init_distributed(args)
    from deqdist.train import run_train
    from deqdist.runtime.distributed import set_run_dir

    if args.run_dir is not None:
        set_run_dir(args.run_dir)

    if args.stop_after is not None and not 1 <= args.stop_after < 2**31:
        raise UsageError(f"--stop-after must be a positive integer, got {args.stop_after}")
    return run_train(args.config, args.run_dir, args.overrides, stop_after=args.stop_after)


def _add_eval(commands) -> None:
    p = commands.add_parser("eval", help="valid/test metrics of a run's latest checkpoint",
                            description="Valid/test metrics of a run's latest checkpoint (DEQ mode).")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--split", choices=["valid", "test", "both"], default="both")
    p.add_argument("--batches", type=int, metavar="N",
                   help="global batches per split (default: data.eval_batches / train.test_batches)")
    _add_overrides(p, OVERRIDES_HELP + " (not model shapes)")
    _add_distributed(p)
    p.set_defaults(run=_eval)


def _eval(args) -> int:
    _init_distributed(args)
    from deqdist.train import run_eval

    if args.batches is not None and not 1 <= args.batches < 2**31:
        raise UsageError(f"--batches must be a positive integer, got {args.batches}")
    splits = ("valid", "test") if args.split == "both" else (args.split,)
    return run_eval(args.run_dir, args.overrides, splits=splits, batches=args.batches)


def _add_generate(commands) -> None:
    p = commands.add_parser("generate", help="sample text from a run's latest checkpoint",
                            description="Sample from a run's latest checkpoint (DEQ mode).")
    p.add_argument("run_dir", metavar="RUN_DIR")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--prompt", help="text prompt (byte corpora; default: logging.sample_prompt)")
    g.add_argument("--prompt-ids", metavar="1,2,3", help="prompt as comma-separated token ids")
    p.add_argument("--tokens", type=int, default=200, metavar="N", help="tokens to generate (default 200)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default 0.8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cache", action="store_true",
                   help="re-solve the whole window for every token instead of decoding with the KV cache")
    _add_overrides(p, OVERRIDES_HELP + " (not model shapes)")
    _add_distributed(p)
    p.set_defaults(run=_generate)


def _generate(args) -> int:
    _init_distributed(args)
    from deqdist.train import run_generate

    ids = None
    if args.prompt_ids is not None:
        try:
            ids = [int(x) for x in args.prompt_ids.split(",") if x.strip()]
        except ValueError:
            raise UsageError(f"--prompt-ids must be comma-separated integers, got {args.prompt_ids!r}") from None
        if not ids:
            raise UsageError("--prompt-ids is empty")
    if not 0 <= args.tokens < 2**31:
        raise UsageError(f"--tokens must be an integer >= 0, got {args.tokens}")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise UsageError(f"--temperature must be a finite number >= 0, got {args.temperature}")
    if not 0 <= args.seed < 2**32:
        raise UsageError(f"--seed must be an integer in [0, 2**32), got {args.seed}")
    if args.prompt is not None:
        _check_utf8("--prompt", args.prompt)
    return run_generate(args.run_dir, args.overrides, prompt=args.prompt, prompt_ids=ids, tokens=args.tokens,
                        temperature=args.temperature, seed=args.seed, cache=not args.no_cache)


def _add_config(commands) -> None:
    p = commands.add_parser("config", help="print the resolved config",
                            description="Print the resolved config as YAML.")
    p.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    _add_overrides(p)
    p.set_defaults(run=_config)


def _config(args) -> int:
    from deqdist.config import load_config

    print(load_config(args.config, args.overrides).to_yaml(), end="")
    return 0


def _add_info(commands) -> None:
    p = commands.add_parser("info", help="versions, devices, processes and the mesh a config would build here",
                            description="Versions, backend, devices, processes and the mesh a config would "
                            "build here; exits 2 with one line if it cannot (launchers run it as their preflight).")
    p.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    p.add_argument("--run-dir", metavar="DIR", help="resolve the config as `deqdist train --run-dir DIR` would")
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    _add_overrides(p)
    _add_distributed(p)
    p.set_defaults(run=_info)


def _info(args) -> int:
    _init_distributed(args)
    from deqdist.main.info import run_info

    return run_info(args.config, args.run_dir, args.overrides, args.json)


def _add_compile(commands) -> None:
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
    _add_overrides(p)
    p.set_defaults(run=_compile)


def _compile(args) -> int:
    from deqdist.main.compile import run_compile

    return run_compile(args.config, args.overrides, topology=args.topology, slices=args.slices,
                       variants_text=args.variants, json_path=args.json)


def _add_prepare(commands) -> None:
    p = commands.add_parser("prepare", help="tokenize a corpus into verified token shards (data.corpus=DIR)",
                            description="Train or load a tokenizer and write INPUT... as token shards with a "
                            "manifest to DIR (train with data.corpus=DIR); or check DIR with --verify. Running "
                            "the same command again resumes, keeping the shards that verify.")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="text files (one document each), directories, "
                   ".jsonl or .parquet files (one document per record), optionally .gz/.bz2/.xz; prefix "
                   "valid=/test=/train= to put all of an input in that split")
    p.add_argument("--out", metavar="DIR", help="output directory (new, empty, or an interrupted prepare)")
    p.add_argument("--verify", metavar="DIR", help="check a prepared directory against its manifest and exit")
    tok = p.add_mutually_exclusive_group()
    tok.add_argument("--vocab-size", type=int, metavar="N", help="train a byte-level BPE of N ids "
                     "(needs: pip install 'deqdist[prepare]')")
    tok.add_argument("--tokenizer", metavar="FILE", help="use this tokenizer.json (HF tokenizers)")
    tok.add_argument("--bytes", action="store_true", help="byte-level, 256 ids, no dependency (the default)")
    p.add_argument("--bos", metavar="TOKEN", help="with --tokenizer: token put before every document (default "
                   "<|endoftext|> if it has one)")
    p.add_argument("--no-bos", action="store_true", help="with --tokenizer: put no token before documents")
    p.add_argument("--field", default="text", metavar="NAME", help="text field of .jsonl/.parquet records "
                   "(default: text)")
    p.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 8), metavar="N",
                   help="tokenizing processes (default: CPU count, at most 8; 0: in this process); the output does "
                   "not depend on it")
    p.add_argument("--split-fractions", default="0.98,0.01,0.01", metavar="T,V,S", help="train,valid,test "
                   "shares, chosen per document by a seeded hash of its text (default 0.98,0.01,0.01)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split hash and the tokenizer's sample")
    p.add_argument("--shard-tokens", type=int, default=1 << 26, metavar="N", help="ids per shard (default 2^26)")
    p.add_argument("--sample-bytes", type=int, default=256 << 20, metavar="N", help="cap on the text a BPE is "
                   "trained on (default 256 MiB)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or messages on stderr")
    p.set_defaults(run=_prepare)


def _prepare(args) -> int:
    from deqdist.prepare.command import run_prepare

    return run_prepare(args)


def _add_bench(commands) -> None:
    p = commands.add_parser("bench", help="benchmarks", description="Benchmarks; integrity is the cost of the "
                            "finite-step guard and checkpoint checksums, lm trains the DEQ and its explicit twin.")
    p.add_argument("what", choices=BENCHES)
    p.add_argument("--repeats", type=int, help="timing repeats (solvers, model, parallel, integrity)")
    p.add_argument("--preset", choices=presets.names(), help="model preset (model, parallel, integrity, lm)")
    p.add_argument("--batch", type=int, help="batch size (model, parallel, integrity)")
    p.add_argument("--steps", type=int, help="training steps of each model (lm; default: the preset's)")
    p.add_argument("--seeds", type=int, help="lm: seeds per model, for mean and spread (default 3)")
    p.add_argument("--models", metavar="A,B", help="lm: which models to train (default all: deq, explicit, "
                   "explicit-xk, reversible-4, reversible-6, reversible-8)")
    p.add_argument("--run-dir", metavar="DIR", help="a run's latest checkpoint: trained parameters (generate, "
                   "model), a batch drawn through it (parallel); lm: keep the two runs in DIR/deq and DIR/explicit")
    _add_overrides(p, "lm: " + OVERRIDES_HELP + " (both runs)")
    p.set_defaults(run=_bench)


def _bench(args) -> int:
    name = f"deqdist.bench.{args.what}"
    if importlib.util.find_spec(name) is None:
        raise UsageError(f"`deqdist bench {args.what}` is not available in this build ({name} is missing)")
    from deqdist.runtime.platform import skip_absent_tpu

    skip_absent_tpu()
    mod = importlib.import_module(name)
    accepted = inspect.signature(mod.run).parameters
    kwargs = {}
    for k in ("repeats", "preset", "batch", "steps", "run_dir", "seeds", "models"):
        v = getattr(args, k)
        if v is None:
            continue
        if isinstance(v, int) and not 1 <= v < 2**31:
            raise UsageError(f"--{k} must be a positive integer, got {v}")
        if k not in accepted:
            raise UsageError(f"`deqdist bench {args.what}` takes no --{k.replace('_', '-')}")
        kwargs[k] = v
    if args.overrides:
        if "overrides" not in accepted:
            raise UsageError(f"`deqdist bench {args.what}` takes no key=value overrides")
        kwargs["overrides"] = args.overrides
    print(mod.run(**kwargs))
    return 0


def keep_large_buffers_in_heap() -> None:
    """Stop glibc from returning freed blocks over 32 MiB to the OS.

    XLA on CPU allocates its large per-call buffers (solver history, activations) afresh
    on every call; above glibc's mmap threshold each one is page-faulted again, which
    can cost more than the solve itself (see `deqdist bench solvers` with and without
    DEQDIST_SYSTEM_MALLOC=1). TCMalloc-style reuse is the usual fix; this is the
    no-dependency version.
    Only this process is affected; DEQDIST_SYSTEM_MALLOC=1 opts out.
    """
    if not sys.platform.startswith("linux") or os.environ.get("DEQDIST_SYSTEM_MALLOC"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, 1 << 30)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top, commands = build_parsers()
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help(sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    cmd = argv[0]
    keep_large_buffers_in_heap()
    try:
        if cmd not in commands:
            raise UsageError(f"unknown command {cmd!r}; use one of {', '.join(commands)} (deqdist --help)")
        # The command's own parser, not `top`: argparse cannot read a command's options and its
        # key=value overrides intermixed through subparsers.
        args = commands[cmd].parse_intermixed_args(argv[1:])
        _check_args(args)
        code = args.run(args)
    except UserError as e:
        # Text from the user may hold undecodable bytes (surrogates); show them escaped, never fail on them.
        msg = " ".join(str(e).split()).encode("utf-8", "backslashreplace").decode("utf-8")
        prog = f"deqdist {cmd}" if cmd in commands else "deqdist"
        print(f"{prog}: error: {msg}", file=sys.stderr, flush=True)
        return _exit_now(2)
    except Exception as e:
        _peer_failure(e)
        raise
    _distributed().finished()
    return code


def _distributed():
    from deqdist.runtime import distributed

    return distributed


def _exit_now(code: int) -> int:
    """In a multi-process job, skip JAX's exit barrier (it would wait minutes for peers that exit too)."""
    if "jax" in sys.modules and _distributed().joined():
        sys.stdout.flush()
        os._exit(code)
    return code


def _peer_failure(e: Exception) -> None:
    if "jax" in sys.modules and _distributed().joined():
        _distributed().failed(e)


if __name__ == "__main__":
    sys.exit(main())
