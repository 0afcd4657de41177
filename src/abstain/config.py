"""Experiment configs: TOML files (stdlib ``tomllib``) validated against a schema.

A config has five sections; every key has a type, a default and a check. Unknown
sections/keys, wrong types and bad values raise :class:`ConfigError` naming the key
(and, for unknown keys, listing the allowed ones).

``[data]``   ``name`` (dataset, required), ``root`` (directory of file-backed datasets),
             ``val_fraction`` (validation split carved from the training data for model
             selection; never the test set), ``augment`` = "none" | "standard" |
             "autoaugment" | "mtsd" (:mod:`abstain.data.augment`).
``[model]``  ``arch`` (required), ``kwargs`` (table passed to ``abstain.models.create``),
             ``init`` (a checkpoint directory or a foreign ``.pt``/``.pth``/``.safetensors``
             file to fine-tune from; relative paths are taken relative to the config file).
``[train]``  ``loss``, ``epochs``, ``batch_size`` (global, over all ranks), ``lr``,
             ``schedule`` ("scratch" | "finetune" | "synthetic" | "constant"; the presets of
             Appendix A.2 also give the defaults of epochs/lr/batch_size), ``momentum``,
             ``weight_decay``, ``seed``, ``amp`` ("off" | "bf16" | "fp16", CUDA only),
             ``channels_last``, ``compile``, ``sync_bn``, ``select`` (model-selection score on
             the validation split), ``val_steps`` (PGD steps of the validation attack).
``[experiment]`` how a stage of ``abstain reproduce`` uses the config (``abstain train``
             ignores it): ``role`` = "model" | "core" (the accurate core model F_core of
             eq. 15, evaluated at every ε of its stage) | "pretrain"; ``init_from`` = the name
             (file stem) of another config of the same stage whose trained model initialises
             this one; ``output`` = where other configs expect this config's trained model,
             relative to ``--data-root`` (named in the error when it is missing).
``[loss]``   ``eps``, ``norm``, ``steps``, ``step_size``, ``beta`` (β of eq. 5/9/20; default
             1, or 0.75 for cra with variant "authors"), ``gamma`` (γ of eq. 7 = β_TRADES for
             trades/era/dga, default 6; Γ of eq. 11 for cra), ``variant`` ("paper" | "authors":
             the equations as printed or the authors' code, for era/dga/cra; docs/fidelity.md),
             ``era_inner`` ("targeted" | "untargeted-shared"; default "targeted", or
             "untargeted-shared" with variant "authors"), ``sigma``, ``k``.

Momentum and weight decay are not stated by the paper. We use SGD with momentum 0.9 and
weight decay 5e-4 (the common CIFAR recipe; the TRADES reference uses 0.9 / 2e-4), except
the ``synthetic`` preset: plain SGD (momentum 0), because with lr 0.1, batch 10 and
momentum 0.9 the 4x64 MLP diverges on gauss3 (measured: 42% validation accuracy after 20
epochs, against 100% with momentum 0). Each preset's defaults (epochs, lr, batch_size,
momentum) apply where the config leaves the key out.
"""
from __future__ import annotations

import copy
import math
import os
import tomllib

import tomli_w
from pathlib import Path
from typing import Any, Callable, Mapping

from .errors import ConfigError
from .validate import NORMS
from .losses.adversarial import ERA_INNER   # each option list is defined where it is used
from .losses.variants import VARIANTS
from .train.schedule import SCHEDULES

from .data.augment import AUGMENTS
AMP = ("off", "bf16", "fp16")
SELECT = ("auto", "last", "nat_acc", "rob_acc", "rob_acc-rob_inacc")

# Appendix A.2 presets: default epochs / lr / batch size, and the lr shape.
PRESETS: dict[str, dict[str, Any]] = {
    "scratch": {"epochs": 100, "lr": 0.1, "batch_size": 200, "momentum": 0.9},
    "finetune": {"epochs": 50, "lr": 1e-3, "batch_size": 200, "momentum": 0.9},
    "synthetic": {"epochs": 20, "lr": 0.1, "batch_size": 10, "momentum": 0.0},
    "constant": {"epochs": 10, "lr": 0.1, "batch_size": 128, "momentum": 0.9},
}

_MISSING = object()


class _Key:
    """One config key: accepted types, default, and a value check."""

    def __init__(self, types: tuple[type, ...], default: Any = _MISSING, *,
                 choices: tuple[Any, ...] | None = None,
                 check: Callable[[Any], str | None] | None = None, nullable: bool = False,
                 doc: str = "") -> None:
        self.types, self.default, self.choices = types, default, choices
        self.check, self.nullable, self.doc = check, nullable, doc

    @property
    def required(self) -> bool:
        return self.default is _MISSING


def _pos(v: Any) -> str | None:
    return None if v > 0 else "must be > 0"


def _nonneg(v: Any) -> str | None:
    return None if v >= 0 else "must be >= 0"


def _frac01(v: Any) -> str | None:
    return None if 0 <= v < 1 else "must be in [0, 1)"


def _finite(check: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
    def inner(v: Any) -> str | None:
        if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
            return "must be finite"
        return check(v)
    return inner


NUM = (int, float)
ROLES = ("model", "core", "pretrain")
SCHEMA: dict[str, dict[str, _Key]] = {
    "experiment": {
        "role": _Key((str,), "model", choices=ROLES),
        "init_from": _Key((str,), None, nullable=True),
        "output": _Key((str,), None, nullable=True),
    },
    "data": {
        "name": _Key((str,), doc="dataset name"),
        "root": _Key((str,), None, nullable=True),
        "val_fraction": _Key(NUM, 0.1, check=_finite(_frac01)),
        "augment": _Key((str,), "none", choices=AUGMENTS),
    },
    "model": {
        "arch": _Key((str,)),
        "kwargs": _Key((dict,), {}),
        "init": _Key((str,), None, nullable=True),
    },
    "train": {
        "loss": _Key((str,), "standard"),
        "epochs": _Key((int,), None, nullable=True, check=_nonneg),   # 0: evaluate as loaded (paper stages)
        "batch_size": _Key((int,), None, nullable=True, check=_pos),
        "lr": _Key(NUM, None, nullable=True, check=_finite(_pos)),
        "schedule": _Key((str,), "constant", choices=SCHEDULES),
        "momentum": _Key(NUM, None, nullable=True, check=_finite(_frac01)),
        "weight_decay": _Key(NUM, 5e-4, check=_finite(_nonneg)),
        "seed": _Key((int,), 0, check=_nonneg),
        "amp": _Key((str,), "off", choices=AMP),
        "channels_last": _Key((bool,), False),
        "compile": _Key((bool,), False),
        "sync_bn": _Key((bool,), False),
        "select": _Key((str,), "auto", choices=SELECT),
        "val_steps": _Key((int,), 10, check=_pos),
    },
    "loss": {
        "eps": _Key(NUM, None, nullable=True, check=_finite(_nonneg)),
        "norm": _Key((str,), "linf", choices=NORMS),
        "steps": _Key((int,), 10, check=_pos),
        "step_size": _Key(NUM, None, nullable=True, check=_finite(_pos)),
        "beta": _Key(NUM, None, nullable=True, check=_finite(_nonneg)),
        "gamma": _Key(NUM, None, nullable=True, check=_finite(_nonneg)),
        "variant": _Key((str,), "paper", choices=VARIANTS),
        "era_inner": _Key((str,), None, nullable=True, choices=ERA_INNER),
        "sigma": _Key(NUM, None, nullable=True, check=_finite(_pos)),
        "k": _Key((int,), None, nullable=True, check=_pos),
    },
}
ADVERSARIAL_LOSSES = ("pgd-at", "trades", "era", "dga")


def _type_name(types: tuple[type, ...]) -> str:
    names = {int: "integer", float: "number", str: "string", bool: "boolean", dict: "table"}
    return " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in types))


def _check_value(section: str, key: str, spec: _Key, value: Any) -> Any:
    where = f"[{section}] {key}"
    if value is None:
        if spec.nullable:
            return None
        raise ConfigError(f"{where} must not be empty")
    ok = isinstance(value, spec.types) and not (isinstance(value, bool) and bool not in spec.types)
    if not ok:
        raise ConfigError(f"{where} must be a {_type_name(spec.types)}, got {type(value).__name__} "
                          f"{value!r}")
    if float in spec.types and isinstance(value, int):
        value = float(value)
    if spec.choices is not None and value not in spec.choices:
        raise ConfigError(f"{where} must be one of {', '.join(map(str, spec.choices))}, got {value!r}")
    if spec.check is not None:
        problem = spec.check(value)
        if problem:
            raise ConfigError(f"{where} {problem}, got {value!r}")
    return value


def validate(raw: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Check ``raw`` (parsed TOML) and return the complete config with defaults filled in
    (preset defaults for epochs/lr/batch_size). Raises :class:`ConfigError`."""
    if not isinstance(raw, Mapping):
        raise ConfigError("a config must be a table of sections")
    unknown = sorted(set(raw) - set(SCHEMA))
    if unknown:
        raise ConfigError(f"unknown section [{unknown[0]}]; allowed sections: "
                          f"{', '.join(f'[{s}]' for s in SCHEMA)}")
    out: dict[str, dict[str, Any]] = {}
    for section, keys in SCHEMA.items():
        given = raw.get(section, {})
        if not isinstance(given, Mapping):
            raise ConfigError(f"[{section}] must be a table, got {type(given).__name__}")
        bad = sorted(set(given) - set(keys))
        if bad:
            raise ConfigError(f"unknown key {bad[0]!r} in [{section}]; allowed keys: "
                              f"{', '.join(keys)}")
        sec: dict[str, Any] = {}
        for key, spec in keys.items():
            if key in given:
                sec[key] = _check_value(section, key, spec, given[key])
            elif spec.required:
                raise ConfigError(f"[{section}] {key} is required")
            else:
                sec[key] = copy.deepcopy(spec.default)
        out[section] = sec
    _cross_checks(out)
    return out


def _cross_checks(cfg: dict[str, dict[str, Any]]) -> None:
    from . import losses

    tr, ls = cfg["train"], cfg["loss"]
    if tr["loss"] not in losses.LOSSES:
        raise ConfigError(f"[train] loss must be one of {', '.join(losses.LOSSES)}, got {tr['loss']!r}")
    preset = PRESETS[tr["schedule"]]
    for key in ("epochs", "lr", "batch_size", "momentum"):
        if tr[key] is None:
            tr[key] = preset[key]
    authors = ls["variant"] == "authors"
    if ls["beta"] is None:   # the loss's own default (abstain.losses.cra.AUTHORS_BETA)
        ls["beta"] = 0.75 if tr["loss"] == "cra" and authors else 1.0
    if ls["era_inner"] is None:
        ls["era_inner"] = "untargeted-shared" if authors else "targeted"
    elif authors and ls["era_inner"] != "untargeted-shared" and tr["loss"] in ("era", "dga"):
        raise ConfigError(f"[loss] variant = \"authors\" uses the authors' single untargeted attack; "
                          f"era_inner = {ls['era_inner']!r} contradicts it (leave era_inner out)")
    if tr["loss"] in ADVERSARIAL_LOSSES and ls["eps"] is None:
        raise ConfigError(f"[loss] eps is required for loss {tr['loss']!r}")
    if tr["loss"] in ("noise", "cra") and ls["sigma"] is None:
        raise ConfigError(f"[loss] sigma is required for loss {tr['loss']!r}")
    if ls["eps"] is not None and ls["norm"] == "linf" and ls["eps"] > 1:
        raise ConfigError(f"[loss] eps = {ls['eps']} exceeds the [0, 1] pixel range for linf "
                          "(ε is in pixel space, e.g. 8/255 = 0.0314)")


def loss_params(cfg: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The ``[loss]`` section without unset (None) entries: the ``params`` of a loss."""
    return {k: v for k, v in cfg["loss"].items() if v is not None}


def parse_override(text: str) -> tuple[str, str, Any]:
    """``section.key=value`` (value in TOML syntax; bare words are strings)."""
    if "=" not in text:
        raise ConfigError(f"--set expects section.key=value, got {text!r}")
    lhs, value_text = text.split("=", 1)
    parts = lhs.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"--set expects section.key=value, got {text!r}")
    try:
        value = tomllib.loads(f"v = {value_text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = value_text.strip()
    return parts[0], parts[1], value


def load(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """Read, override (``section.key=value``) and validate a TOML config file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        raw = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p} is not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p} is not a text file") from None
    for text in overrides:
        section, key, value = parse_override(text)
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ConfigError(f"[{section}] must be a table")
        raw[section][key] = value
    cfg = validate(raw)
    init = cfg["model"]["init"]
    if init and not Path(init).is_absolute():
        cfg["model"]["init"] = str((p.parent / init).resolve())
    root = cfg["data"]["root"]
    if root and not Path(root).is_absolute():
        cfg["data"]["root"] = str((p.parent / root).resolve())
    return cfg


def configs_dir() -> Path:
    """Where the experiment configs of ``abstain reproduce`` live: ``$ABSTAIN_CONFIGS``, else
    the ``configs/`` beside the package's ``src/`` (a source checkout or editable install),
    else ``./configs``."""
    env = os.environ.get("ABSTAIN_CONFIGS")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parents[2] / "configs"
    return checkout if checkout.is_dir() else Path("configs")


def load_named(name: str, overrides: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The validated config ``configs_dir()/<name>.toml`` with ``{"section.key": value}``
    overrides (how stages vary one setting of a config, e.g. the ε of a sweep)."""
    path = configs_dir() / f"{name}.toml"
    if not path.is_file():
        raise ConfigError(f"experiment config {path} not found (configs/ of the abstain checkout, "
                          "or set ABSTAIN_CONFIGS to the directory holding it)")
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if not isinstance(raw.setdefault(section, {}), dict) or not key:
            raise ConfigError(f"bad override {dotted!r} of {path}")
        raw[section][key] = value
    return validate(raw)


def loads(text: str) -> dict[str, dict[str, Any]]:
    try:
        return validate(tomllib.loads(text))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"not valid TOML: {e}") from None


# --------------------------------------------------------------------------- writing
def dumps(cfg: Mapping[str, Mapping[str, Any]]) -> str:
    """The config as TOML (unset keys omitted), written by tomli-w (any string, newlines and
    control characters included, round-trips); ``loads(dumps(c)) == c``."""
    try:
        return tomli_w.dumps({section: {k: v for k, v in values.items() if v is not None}
                              for section, values in cfg.items()})
    except TypeError as e:
        raise ConfigError(f"cannot write the config as TOML: {e}") from None


def diff(a: Mapping[str, Mapping[str, Any]], b: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Dotted keys whose values differ between two validated configs."""
    out = []
    for section in sorted(set(a) | set(b)):
        sa, sb = a.get(section, {}), b.get(section, {})
        for key in sorted(set(sa) | set(sb)):
            if sa.get(key) != sb.get(key):
                out.append(f"{section}.{key}")
    return out
