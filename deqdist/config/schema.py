"""The schema of the run configuration: what a `Config` holds and what makes one valid.

A `Config` composes the config types that each part of deqdist owns:

    model       deqdist.model.ModelConfig
    solver      deqdist.deq.DEQConfig        (fwd / bwd: deqdist.solvers.SolverConfig)
    parallel    deqdist.parallel.ParallelConfig
    data        deqdist.data.DataConfig
    train       TrainConfig       (optimizer, schedule, phases, Jacobian term, eval/log cadence, seed)
    checkpoint  CheckpointConfig  (cadence, retention, async)
    logging     LoggingConfig     (TensorBoard, progress display, end-of-run sample)

`Config.validate` runs every part's own checks and the cross-section ones, and raises a
`ConfigError` (a `deqdist.errors.UserError`) whose message is one line and names what is valid.
How a `Config` is built from defaults, preset files and `key=value` overrides is
deqdist.config.layers.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from deqdist.data import DataConfig
from deqdist.deq import DEQConfig
from deqdist.errors import UserError
from deqdist.model import ModelConfig
from deqdist.parallel import ParallelConfig
from deqdist.store.atomic import write_atomic
from deqdist.typed_config import ConfigError, plain

SCHEDULES = ("cosine", "linear", "constant")
PROGRESS = ("auto", "bar", "lines", "off")


@dataclasses.dataclass
class TrainConfig:
    """Optimisation, the training phases, the Jacobian term and the loop's cadence.

    The number of eval batches is `data.eval_batches`.
    """

    steps: int = 600  # optimizer steps of the whole run (resume continues to this)
    lr: float = 3e-3  # peak learning rate (AdamW)
    warmup_steps: int = 30  # linear warm-up from 0 to lr
    schedule: str = "cosine"  # after warm-up: cosine | linear | constant
    min_lr_ratio: float = 0.1  # cosine/linear decay to lr * min_lr_ratio at `steps`
    weight_decay: float = 0.01  # decoupled (AdamW), on matrices only (not biases/LayerNorm gains)
    b1: float = 0.9
    b2: float = 0.98
    eps: float = 1e-8
    clip_norm: float = 1.0  # global gradient-norm clip; 0 turns it off
    warmup_explicit_steps: int = 50  # first N steps train the explicit twin (n_unroll applications of f)
    n_unroll: int = 12  # depth of the explicit twin
    # The Jacobian term is jac_reg_weight * max(J - jac_reg_target, 0), with J the Hutchinson estimate
    # of ||J_f(z*)||_F^2 / (S*D): a hinge that leaves the Jacobian free below the target and holds it
    # there (target 0: a plain linear penalty). J tracks the solver's forward iterations, so a target
    # near its value after the warm-up keeps them flat.
    jac_reg_every: int = 0  # add the Jacobian term every k steps (0: never)
    jac_reg_weight: float = 0.0
    jac_reg_target: float = 0.0
    eval_every: int = 200  # validation every N steps (0: only at the end)
    log_every: int = 10  # metrics every N steps
    spectral_every: int = 100  # log the spectral radius of J_f at z* every N steps and at the end (0: never)
    test_batches: int | None = 200  # final test evaluation (null: the whole test split)
    seed: int = 0  # parameter init and dropout
    max_bad_steps: int = 10  # stop (exit 4) after this many consecutive rejected (non-finite / diverged) steps
    max_diverged_frac: float = 0.5  # reject a step whose forward solve diverged for more than this share of samples

    def validate(self) -> "TrainConfig":
        _positive(self, "train", "steps", "log_every", "max_bad_steps", "n_unroll")
        if not 0 <= self.max_diverged_frac <= 1:
            raise ConfigError(f"train.max_diverged_frac must be in [0, 1], got {self.max_diverged_frac!r}")
        _non_negative(self, "train", "warmup_steps", "warmup_explicit_steps", "eval_every", "spectral_every",
                      "jac_reg_every")
        if not self.lr > 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"train.schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        for name in ("b1", "b2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be in [0, 1), got {getattr(self, name)!r}")
        for name in ("weight_decay", "clip_norm", "eps", "jac_reg_weight", "jac_reg_target"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.test_batches is not None and self.test_batches < 1:
            raise ConfigError(f"train.test_batches must be a positive integer or null, got {self.test_batches!r}")
        if self.seed < 0:
            raise ConfigError(f"train.seed must be >= 0, got {self.seed!r}")
        return self


@dataclasses.dataclass
class CheckpointConfig:
    every: int = 100  # save every N steps (0: only at the end and on preemption)
    keep: int = 3  # keep the last K checkpoints
    async_save: bool = True  # write in the background while training continues

    def validate(self) -> "CheckpointConfig":
        _non_negative(self, "checkpoint", "every")
        _positive(self, "checkpoint", "keep")
        return self


@dataclasses.dataclass
class LoggingConfig:
    tensorboard: bool = True  # TensorBoard event files in RUN_DIR/tb (process 0)
    progress: str = "auto"  # auto (bar on a terminal, else lines) | bar | lines | off
    sample_tokens: int = 200  # length of the sample printed at the end (0: none)
    sample_prompt: str = "def "
    sample_temperature: float = 0.8  # 0: greedy

    def validate(self) -> "LoggingConfig":
        if self.progress not in PROGRESS:
            raise ConfigError(f"logging.progress must be one of {', '.join(PROGRESS)}, got {self.progress!r}")
        _non_negative(self, "logging", "sample_tokens")
        if self.sample_temperature < 0:
            raise ConfigError(f"logging.sample_temperature must be >= 0, got {self.sample_temperature!r}")
        return self


def _positive(obj, section: str, *names: str) -> None:
    for n in names:
        if getattr(obj, n) < 1:
            raise ConfigError(f"{section}.{n} must be a positive integer, got {getattr(obj, n)!r}")


def _non_negative(obj, section: str, *names: str) -> None:
    for n in names:
        if getattr(obj, n) < 0:
            raise ConfigError(f"{section}.{n} must be an integer >= 0, got {getattr(obj, n)!r}")


@dataclasses.dataclass
class Config:
    """The whole run's configuration; `load_config` builds one from the layers (deqdist.config.layers)."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    solver: DEQConfig = dataclasses.field(default_factory=DEQConfig)
    parallel: ParallelConfig = dataclasses.field(default_factory=ParallelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)

    def validate(self) -> "Config":
        """Every part's own checks plus the cross-section ones; ConfigError on the first problem."""
        _wrap(self.model.validate, "")
        _wrap(self.solver.fwd.validate, "solver.fwd: ")
        _wrap(self.solver.bwd.validate, "solver.bwd: ")
        _wrap(self.solver.validate, "")
        if self.solver.grad == "reversible":
            for key in ("dtype", "state_dtype"):  # the reversal is exact only if neither rounds too coarsely
                _wrap(lambda: self.solver.reversible.check_dtype(getattr(self.model, key), f"model.{key}"), "")
        _wrap(self.parallel.validate, "")
        _wrap(self.data.validate, "")
        self.train.validate()
        self.checkpoint.validate()
        self.logging.validate()
        if self.data.seq_len != self.model.seq_len:
            raise ConfigError(
                f"data.seq_len ({self.data.seq_len}) and model.seq_len ({self.model.seq_len}) differ; "
                f"they are one setting: set model.seq_len"
            )
        if self.data.vocab_size not in (None, self.model.vocab_size):
            raise ConfigError(
                f"data.vocab_size ({self.data.vocab_size}) and model.vocab_size ({self.model.vocab_size}) differ; "
                f"they are one setting: set model.vocab_size"
            )
        if self.train.warmup_explicit_steps > self.train.steps:
            raise ConfigError(
                f"train.warmup_explicit_steps ({self.train.warmup_explicit_steps}) exceeds train.steps "
                f"({self.train.steps}): the run would never train the DEQ; lower train.warmup_explicit_steps"
            )
        return self

    def to_dict(self) -> dict:
        """Plain nested dict (lists for tuples), the form written to config.yaml."""
        return plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    def save(self, path: str | Path) -> None:
        """Write the resolved config (atomically) with a header saying how to reuse it."""
        write_atomic(path, "# deqdist resolved config: reload with `deqdist train --config THIS_FILE`\n"
                     + self.to_yaml())


def _wrap(fn, prefix: str) -> None:
    try:
        fn()
    except UserError:
        raise
    except (ValueError, TypeError) as e:  # the parts' own validate() raise plain ValueErrors
        raise ConfigError(prefix + str(e)) from None


# Fields of ModelConfig that change the parameter tree (shapes, dtypes or presence).
SHAPE_KEYS = ("vocab_size", "d_model", "n_heads", "d_mlp", "tie_embeddings", "weight_norm", "param_dtype")


def shape_conflicts(saved: Config, new: Config) -> list[str]:
    """'model.d_model: 64 (saved) vs 128 (new)' for every parameter-shape setting that differs."""
    out = []
    for k in SHAPE_KEYS:
        a, b = getattr(saved.model, k), getattr(new.model, k)
        if a != b:
            out.append(f"model.{k}: {a!r} (saved) vs {b!r} (new)")
    return out

