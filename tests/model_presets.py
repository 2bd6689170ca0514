"""The model section of a preset as a ModelConfig, for the tests that build a model without the trainer."""
from __future__ import annotations

import dataclasses

import yaml

from deqdist import presets
from deqdist.model import ModelConfig


def get_preset(name: str, **overrides) -> ModelConfig:
    """The model of preset `name` (its file's `model` section) with field overrides, validated."""
    if name not in presets.names():
        raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(presets.names())}")
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    bad = sorted(set(overrides) - fields)
    if bad:
        raise ValueError(f"unknown model config field(s) {bad}")
    section = yaml.safe_load(presets.path(name).read_text(encoding="utf-8")).get("model") or {}
    return ModelConfig(**{**section, **overrides}).validate()
