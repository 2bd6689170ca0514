"""deqdist: Deep Equilibrium Transformers on many devices with JAX.

The rooms, and which may import which. Each row may import the rows below it, never a row
above nor a room beside it in its own row (tests/test_layers.py checks this, and that no
import cycle exists, not even inside a room):

    cli.py                  parses and dispatches, nothing else
    main/                   one module per command: train, eval, generate, config, info, compile, prepare, bench
    bench/                  `deqdist bench ...` (only main/ imports it)
    train/                  train state, steps, the loop and its hooks, metrics, evaluation, sampling, resume
    config/     runtime/    the composed config | backend, processes, heartbeats, signals, the allocator
    data/       presets.py  corpora, pipelines, host->device batches | the preset YAML files
    prepare/    parallel/   tokenizer, token shards, manifest | mesh, shardings, the shard_map'd solve
    model/      store/      the DEQ-Transformer (Flax NNX) | run directory, lock, atomic writes, checkpoints
    deq.py      regularize.py   the equilibrium layer (custom_vjp) | Jacobian penalty, spectral radius
    reversible.py           the reversible coupled iteration and its exact backward
    solvers/                root finders (Broyden, Anderson, Picard) and their stop rule
    typed_config.py  report.py  dataclass configs from plain values | text tables
    errors.py               UserError, the root of every one-line bad-input error

So solvers/ and deq.py know no model, mesh or config file; model/ knows no mesh, trainer or
preset; store/ and runtime/ know no model and no config file; nothing in the library imports
bench/, main/ or cli.py.
"""
