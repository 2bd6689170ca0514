"""The run configuration: typed dataclasses, YAML files, dotted overrides, clear errors.

Two modules, one concern each:

    schema.py   what a Config holds and what makes one valid (Config, TrainConfig,
                CheckpointConfig, LoggingConfig, shape_conflicts)
    layers.py   how one is built: key canonicalisation, flattening, the layers
                (defaults < default preset < YAML file < key=value overrides), diff

This package re-exports the names the rest of deqdist imports.
"""
from deqdist.typed_config import ConfigError

from .layers import COUPLED, OLD_NAMES, canonical_key, diff, load_config, parse_overrides, read_yaml, resolve
from .schema import SHAPE_KEYS, CheckpointConfig, Config, LoggingConfig, TrainConfig, shape_conflicts

__all__ = [
    "COUPLED", "CheckpointConfig", "Config", "ConfigError", "LoggingConfig", "OLD_NAMES", "SHAPE_KEYS",
    "TrainConfig", "canonical_key", "diff", "load_config", "parse_overrides", "read_yaml", "resolve",
    "shape_conflicts",
]
