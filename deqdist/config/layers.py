"""The layering machinery: a `Config` from defaults, YAML files and dotted overrides.

Layers are applied in order: each field's own default, the default preset's
file (configs/tiny.yaml), a YAML file, then `key=value` overrides whose
values are parsed as YAML (`train.lr=3e-4`, `data.split_fractions=[0.8,0.1,0.1]`,
`data.cache_dir=null`).

Shorthands, coupled keys and old names:
  * `solver.<field>` for a field of SolverConfig that DEQConfig lacks
    (`solver.max_iter`, `solver.tol`, `solver.method`, ...) sets the *forward*
    solver, i.e. means `solver.fwd.<field>`. Set `solver.bwd.<field>` for the
    backward (adjoint) solve.
  * `model.seq_len` and `data.seq_len` are one setting (the training context);
    so are `model.vocab_size` and `data.vocab_size`. Setting either sets both;
    giving both with different values in one layer is an error.
  * `model.n_unroll` and `model.jac_reg_{every,weight,target}` are the old names
    of `train.n_unroll` and `train.jac_reg_*` (only the trainer reads them); they
    still work, in overrides and in the config.yaml of older run directories,
    for this release.

Every problem is a `ConfigError` whose message is one line and names what is valid.

Why not a library: OmegaConf (structured configs) does typed dataclass
sections, YAML merging and dotted overrides, and 2.4 even suggests close keys,
but its errors are multi-line reports in its own words, it takes integers of
any size and NaN/inf floats, and it has no notion of the solver shorthand, the
coupled keys or the old names above; translating its errors back would be
more code than `deqdist.typed_config`. tyro and draccus build `--train.lr`
flags from dataclasses (see deqdist.cli), not `key=value` layers over YAML.
So the coercion and the key handling stay here, small and in one place.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from deqdist import presets
from deqdist.deq import DEQConfig
from deqdist.solvers import SolverConfig
from deqdist.typed_config import ConfigError, build, hints, is_dataclass_type

from .schema import Config

COUPLED = (("model.seq_len", "data.seq_len"), ("model.vocab_size", "data.vocab_size"))
_SOLVER_FIELDS = {f.name for f in dataclasses.fields(SolverConfig)}
_DEQ_FIELDS = {f.name for f in dataclasses.fields(DEQConfig)}
_FWD_ALIASES = sorted(_SOLVER_FIELDS - _DEQ_FIELDS)
OLD_NAMES = {f"model.{k}": f"train.{k}" for k in ("n_unroll", "jac_reg_every", "jac_reg_weight", "jac_reg_target")}


def _section_class(path: tuple[str, ...]):
    """The dataclass type at a (possibly nested) section path, or None if the path is a leaf."""
    cls = Config
    for p in path:
        t = hints(cls).get(p)
        if not is_dataclass_type(t):
            return None
        cls = t
    return cls


def _valid_keys_message(prefix: tuple[str, ...], cls) -> str:
    names = sorted(f.name for f in dataclasses.fields(cls))
    where = f"under '{'.'.join(prefix)}'" if prefix else "(top-level sections)"
    msg = f"valid keys {where}: {', '.join(names)}"
    if cls is DEQConfig:
        msg += f"; forward-solver shorthands: {', '.join(_FWD_ALIASES)}"
    return msg


def canonical_key(key: str, section_ok: bool = False) -> str:
    """Check a dotted key against the schema; expand solver shorthands. ConfigError if unknown.

    A key naming a whole section is an error unless `section_ok`.
    """
    parts = tuple(p for p in key.strip().split("."))
    if not parts or any(not p for p in parts):
        raise ConfigError(f"malformed key {key!r}; use dotted names like train.lr or solver.fwd.max_iter")
    if len(parts) == 2 and parts[0] == "solver" and parts[1] in _FWD_ALIASES:
        parts = ("solver", "fwd", parts[1])
    parts = tuple(OLD_NAMES.get(".".join(parts), ".".join(parts)).split("."))
    cls = Config
    for i, p in enumerate(parts):
        names = {f.name for f in dataclasses.fields(cls)}
        if p not in names:
            candidates = sorted(names | (set(_FWD_ALIASES) if cls is DEQConfig else set()))
            close = difflib.get_close_matches(p, candidates, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown key '{key}'{hint}; {_valid_keys_message(parts[:i], cls)}")
        t = hints(cls)[p]
        if is_dataclass_type(t):
            if i == len(parts) - 1 and not section_ok:
                raise ConfigError(
                    f"'{key}' is a section, not a value; set one of its keys, "
                    f"{_valid_keys_message(parts[: i + 1], t)}"
                )
            cls = t
        elif i != len(parts) - 1:
            raise ConfigError(f"unknown key '{key}': '{'.'.join(parts[: i + 1])}' is a value, not a section")
    return ".".join(parts)


def _flatten(d: Any, prefix: str, source: str) -> dict[str, Any]:
    """Nested mapping from YAML -> {dotted key: value}; sections must be mappings."""
    out: dict[str, Any] = {}
    if not isinstance(d, Mapping):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(d).__name__}")
    for k, v in d.items():
        if not isinstance(k, str):
            raise ConfigError(f"{source}: key {k!r} under '{prefix or 'top level'}' is not a string")
        key = f"{prefix}.{k}" if prefix else k
        parts = tuple(canonical_key(key, section_ok=True).split("."))
        if _section_class(parts) is not None:
            if v is None:
                continue  # an empty section in YAML
            if not isinstance(v, Mapping):
                raise ConfigError(f"{source}: '{key}' is a section and must be a mapping, got {v!r}")
            out.update(_flatten(v, key, source))
        else:
            out[".".join(parts)] = v
    return out


def _field_type(key: str):
    parts = key.split(".")
    cls = _section_class(tuple(parts[:-1]))
    return hints(cls)[parts[-1]]


def _defaults_flat() -> dict[str, Any]:
    """The bottom layers: each field's own default, then the default preset's file."""
    flat = _flatten(Config().to_dict(), "", "defaults")
    path = presets.path(presets.DEFAULT)
    _apply(flat, _flatten(read_yaml(path), "", str(path)), str(path))
    return flat


def _apply(flat: dict[str, Any], layer: dict[str, Any], source: str) -> None:
    layer = dict(layer)
    for group in COUPLED:
        given = {k: layer[k] for k in group if k in layer}
        if len(given) > 1 and len({repr(v) for v in given.values()}) > 1:
            a, b = list(given.items())[:2]
            raise ConfigError(
                f"{source}: {a[0]} ({a[1]!r}) and {b[0]} ({b[1]!r}) disagree; they are one setting, give one of them"
            )
        if given:
            value = next(iter(given.values()))
            for k in group:
                layer[k] = value
    flat.update(layer)


def resolve(layers: Iterable[tuple[Mapping | dict, str]], overrides: Iterable[str] = ()) -> Config:
    """Config from the defaults (with the default preset), then nested-mapping layers (e.g. YAML files),
    then overrides."""
    flat = _defaults_flat()
    for d, source in layers:
        _apply(flat, _flatten(d, "", source), source)
    _apply(flat, parse_overrides(overrides), "command line")
    cfg = build(Config, flat, "")
    return cfg.validate()


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """['train.lr=3e-4', ...] -> {canonical key: typed-ish value} (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value, e.g. train.steps=100")
        key, raw = item.split("=", 1)
        key = canonical_key(key)
        t = _field_type(key)
        out[key] = _parse_value(raw, t, key)
    return out


def _parse_value(raw: str, t: Any, key: str) -> Any:
    string_typed = t is str or (
        typing.get_origin(t) in (typing.Union, types.UnionType) and str in typing.get_args(t)
    )
    if string_typed and raw.strip() not in ("null", "~", "None"):
        return raw  # strings are taken verbatim (a corpus path may look like a number)
    try:
        return yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError as e:
        raise ConfigError(f"{key}: cannot parse value {raw!r} ({str(e).splitlines()[0]})") from None


def read_yaml(path: str | Path) -> dict:
    """The mapping in a YAML file, or in the preset a path that is no file names (deqdist.presets)."""
    p = Path(path).expanduser()
    if not p.is_file():
        p = presets.find(path)
    if p is None:
        raise ConfigError(f"config file {str(path)!r} does not exist; presets in {presets.DIRECTORY}: "
                          f"{', '.join(n + '.yaml' for n in presets.names())}")
    try:
        d = yaml.safe_load(p.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {e.strerror}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {str(path)!r} is not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections, got {type(d).__name__}")
    return d


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Defaults (with the tiny preset) < the YAML file or preset at `path` (if any) < dotted overrides."""
    layers = [] if path is None else [(read_yaml(path), str(path))]
    return resolve(layers, overrides)

def diff(a: Config, b: Config) -> list[str]:
    """'key: old -> new' for every leaf that differs."""
    fa, fb = _flatten(a.to_dict(), "", "a"), _flatten(b.to_dict(), "", "b")
    return [f"{k}: {fa[k]!r} -> {fb[k]!r}" for k in fa if fa[k] != fb.get(k)]

