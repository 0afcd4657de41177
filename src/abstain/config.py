"""Experiment configs: TOML files (stdlib ``tomllib``) validated against a schema.

A config has five sections; every key has a type, a default and a check. Unknown
sections/keys, wrong types and bad values raise :class:`ConfigError` naming the key
(and, for unknown keys, listing the allowed ones). :func:`validate` returns a frozen
:class:`Config` of one frozen dataclass per section (:class:`DataSettings`,
:class:`ModelSettings`, :class:`TrainSettings`, :class:`LossSettings`,
:class:`ExperimentSettings`); :func:`abstain.train.fit` takes the train and loss sections.

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
import dataclasses
import math
import os
import tomllib

import tomli_w
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from . import losses
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

# --------------------------------------------------------------------------- the sections
# Each section is a frozen dataclass whose fields are the schema: a field's metadata holds
# its accepted types, choices and value check, so the key list, defaults and checks live in
# one place (plain dataclasses: no new dependency, and pydantic/msgspec would still need
# the hand-written checks, the preset defaults and the cross-section rules below).
def _key(types: tuple[type, ...], default: Any = dataclasses.MISSING, *,
         choices: tuple[Any, ...] | None = None, check: Callable[[Any], str | None] | None = None,
         nullable: bool = False, doc: str = "") -> Any:
    meta = {"types": types, "choices": choices, "check": check, "nullable": nullable, "doc": doc}
    if isinstance(default, dict):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


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


class Section(Mapping):
    """A validated config section: a frozen dataclass whose fields are the section's keys.

    Read as attributes (``cfg.train.lr``) or as a read-only mapping (``cfg["train"]["lr"]``,
    ``dict(cfg.train)``). Constructing one checks every value (type, choices, range) and
    raises :class:`ConfigError` naming ``[section] key``."""

    SECTION = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = _check_value(self.SECTION, f.name, f.metadata, getattr(self, f.name))
            object.__setattr__(self, f.name, value)

    @classmethod
    def keys_(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_table(cls, given: Any) -> "Section":
        """The section from a parsed TOML table: unknown keys and missing required keys
        are refused."""
        if not isinstance(given, Mapping):
            raise ConfigError(f"[{cls.SECTION}] must be a table, got {type(given).__name__}")
        names = cls.keys_()
        bad = sorted(set(given) - set(names))
        if bad:
            raise ConfigError(f"unknown key {bad[0]!r} in [{cls.SECTION}]; allowed keys: {', '.join(names)}")
        for f in dataclasses.fields(cls):
            if f.name not in given and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"[{cls.SECTION}] {f.name} is required")
        return cls(**{k: copy.deepcopy(v) for k, v in given.items()})

    def __getitem__(self, key: str) -> Any:
        if key not in self.keys_():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys_())

    def __len__(self) -> int:
        return len(self.keys_())

    def to_dict(self) -> dict[str, Any]:
        return {k: copy.deepcopy(getattr(self, k)) for k in self.keys_()}


@dataclasses.dataclass(frozen=True, eq=True)
class ExperimentSettings(Section):
    """``[experiment]``: how a stage of ``abstain reproduce`` uses the config."""

    SECTION = "experiment"
    role: str = _key((str,), "model", choices=ROLES)
    init_from: str | None = _key((str,), None, nullable=True)
    output: str | None = _key((str,), None, nullable=True)


@dataclasses.dataclass(frozen=True, eq=True)
class DataSettings(Section):
    """``[data]``: the dataset and its validation split."""

    SECTION = "data"
    name: str = _key((str,), doc="dataset name")
    root: str | None = _key((str,), None, nullable=True)
    val_fraction: float = _key(NUM, 0.1, check=_finite(_frac01))
    augment: str = _key((str,), "none", choices=AUGMENTS)


@dataclasses.dataclass(frozen=True, eq=True)
class ModelSettings(Section):
    """``[model]``: the architecture, its keyword arguments and the initial weights."""

    SECTION = "model"
    arch: str = _key((str,))
    kwargs: dict = _key((dict,), {})
    init: str | None = _key((str,), None, nullable=True)


@dataclasses.dataclass(frozen=True, eq=True)
class TrainSettings(Section):
    """``[train]``: the loss by name, the optimiser and schedule (Appendix A.2), the seed,
    the device options and model selection. ``epochs``/``lr``/``batch_size``/``momentum``
    left out (None) take the schedule preset's values (:data:`PRESETS`)."""

    SECTION = "train"
    loss: str = _key((str,), "standard")
    epochs: int | None = _key((int,), None, nullable=True, check=_nonneg)   # 0: evaluate as loaded
    batch_size: int | None = _key((int,), None, nullable=True, check=_pos)
    lr: float | None = _key(NUM, None, nullable=True, check=_finite(_pos))
    schedule: str = _key((str,), "constant", choices=SCHEDULES)
    momentum: float | None = _key(NUM, None, nullable=True, check=_finite(_frac01))
    weight_decay: float = _key(NUM, 5e-4, check=_finite(_nonneg))
    seed: int = _key((int,), 0, check=_nonneg)
    amp: str = _key((str,), "off", choices=AMP)
    channels_last: bool = _key((bool,), False)
    compile: bool = _key((bool,), False)
    sync_bn: bool = _key((bool,), False)
    select: str = _key((str,), "auto", choices=SELECT)
    val_steps: int = _key((int,), 10, check=_pos)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss not in losses.LOSSES:
            raise ConfigError(f"[train] loss must be one of {', '.join(losses.LOSSES)}, got {self.loss!r}")
        preset = PRESETS[self.schedule]
        for key in ("epochs", "lr", "batch_size", "momentum"):
            if getattr(self, key) is None:
                object.__setattr__(self, key, preset[key])


@dataclasses.dataclass(frozen=True, eq=True)
class LossSettings(Section):
    """``[loss]``: the parameters of the loss named by ``[train] loss`` (unset keys: the
    loss's own defaults; :meth:`params`)."""

    SECTION = "loss"
    eps: float | None = _key(NUM, None, nullable=True, check=_finite(_nonneg))
    norm: str = _key((str,), "linf", choices=NORMS)
    steps: int = _key((int,), 10, check=_pos)
    step_size: float | None = _key(NUM, None, nullable=True, check=_finite(_pos))
    beta: float | None = _key(NUM, None, nullable=True, check=_finite(_nonneg))
    gamma: float | None = _key(NUM, None, nullable=True, check=_finite(_nonneg))
    variant: str = _key((str,), "paper", choices=VARIANTS)
    era_inner: str | None = _key((str,), None, nullable=True, choices=ERA_INNER)
    sigma: float | None = _key(NUM, None, nullable=True, check=_finite(_pos))
    k: int | None = _key((int,), None, nullable=True, check=_pos)

    def params(self) -> dict[str, Any]:
        """The set entries: the ``params`` of a loss (:mod:`abstain.losses`)."""
        return {k: v for k, v in self.to_dict().items() if v is not None}


SECTIONS: dict[str, type[Section]] = {"experiment": ExperimentSettings, "data": DataSettings,
                                      "model": ModelSettings, "train": TrainSettings, "loss": LossSettings}
SCHEMA: dict[str, tuple[str, ...]] = {name: cls.keys_() for name, cls in SECTIONS.items()}
ADVERSARIAL_LOSSES = ("pgd-at", "trades", "era", "dga")


def resolve_loss(train: TrainSettings, loss: LossSettings) -> LossSettings:
    """``[loss]`` checked against the loss of ``[train]``, with the defaults that depend on
    it filled in (β 0.75 for the authors' CRA, the authors' single untargeted ERA attack).
    :func:`abstain.train.fit` applies it too, so a hand-made pair is checked the same way."""
    authors = loss.variant == "authors"
    updates: dict[str, Any] = {}
    if loss.beta is None:   # the loss's own default (abstain.losses.cra.AUTHORS_BETA)
        updates["beta"] = 0.75 if train.loss == "cra" and authors else 1.0
    if loss.era_inner is None:
        updates["era_inner"] = "untargeted-shared" if authors else "targeted"
    elif authors and loss.era_inner != "untargeted-shared" and train.loss in ("era", "dga"):
        raise ConfigError(f"[loss] variant = \"authors\" uses the authors' single untargeted attack; "
                          f"era_inner = {loss.era_inner!r} contradicts it (leave era_inner out)")
    if train.loss in ADVERSARIAL_LOSSES and loss.eps is None:
        raise ConfigError(f"[loss] eps is required for loss {train.loss!r}")
    if train.loss in ("noise", "cra") and loss.sigma is None:
        raise ConfigError(f"[loss] sigma is required for loss {train.loss!r}")
    if loss.eps is not None and loss.norm == "linf" and loss.eps > 1:
        raise ConfigError(f"[loss] eps = {loss.eps} exceeds the [0, 1] pixel range for linf "
                          "(ε is in pixel space, e.g. 8/255 = 0.0314)")
    return dataclasses.replace(loss, **updates) if updates else loss


@dataclasses.dataclass(frozen=True, eq=True)
class Config(Mapping):
    """A validated experiment config: one frozen section each (:data:`SECTIONS`). Read as
    attributes (``cfg.train.lr``) or as a read-only mapping of sections (``cfg["train"]["lr"]``)."""

    data: DataSettings
    model: ModelSettings
    train: TrainSettings
    loss: LossSettings
    experiment: ExperimentSettings = dataclasses.field(default_factory=ExperimentSettings)

    def __post_init__(self) -> None:
        for name, cls in SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"[{name}] must be a {cls.__name__}, got {type(getattr(self, name)).__name__}")
        object.__setattr__(self, "loss", resolve_loss(self.train, self.loss))

    def __getitem__(self, section: str) -> Section:
        if section not in SECTIONS:
            raise KeyError(section)
        return getattr(self, section)

    def __iter__(self) -> Iterator[str]:
        return iter(SECTIONS)

    def __len__(self) -> int:
        return len(SECTIONS)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain dicts (JSON/TOML-ready), in the order of :data:`SECTIONS`."""
        return {name: getattr(self, name).to_dict() for name in SECTIONS}

    def with_overrides(self, overrides: Mapping[str, Any]) -> "Config":
        """This config with ``{"section.key": value}`` replaced, validated again (how a stage
        varies one setting of a config, e.g. the ε of a sweep)."""
        raw = self.to_dict()
        for dotted, value in overrides.items():
            section, _, key = dotted.partition(".")
            if section not in raw or not key:
                raise ConfigError(f"bad override {dotted!r}: expected section.key")
            raw[section][key] = value
        return validate(raw)


def _type_name(types: tuple[type, ...]) -> str:
    names = {int: "integer", float: "number", str: "string", bool: "boolean", dict: "table"}
    return " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in types))


def _check_value(section: str, key: str, spec: Mapping[str, Any], value: Any) -> Any:
    where = f"[{section}] {key}"
    if value is None:
        if spec["nullable"]:
            return None
        raise ConfigError(f"{where} must not be empty")
    types = spec["types"]
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok:
        raise ConfigError(f"{where} must be a {_type_name(types)}, got {type(value).__name__} "
                          f"{value!r}")
    if float in types and isinstance(value, int):
        value = float(value)
    if spec["choices"] is not None and value not in spec["choices"]:
        raise ConfigError(f"{where} must be one of {', '.join(map(str, spec['choices']))}, got {value!r}")
    if spec["check"] is not None:
        problem = spec["check"](value)
        if problem:
            raise ConfigError(f"{where} {problem}, got {value!r}")
    return value


def validate(raw: Mapping[str, Any]) -> Config:
    """Check ``raw`` (parsed TOML, or a :class:`Config`) and return the complete
    :class:`Config` with defaults filled in (preset defaults for epochs/lr/batch_size).
    Raises :class:`ConfigError`."""
    if isinstance(raw, Config):
        raw = raw.to_dict()
    if not isinstance(raw, Mapping):
        raise ConfigError("a config must be a table of sections")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown section [{unknown[0]}]; allowed sections: "
                          f"{', '.join(f'[{s}]' for s in SECTIONS)}")
    sections = {name: cls.from_table(raw.get(name, {})) for name, cls in SECTIONS.items()}
    return Config(**sections)


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


def load(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> Config:
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
    init, root = cfg.model.init, cfg.data.root
    if init and not Path(init).is_absolute():
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, init=str((p.parent / init).resolve())))
    if root and not Path(root).is_absolute():
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str((p.parent / root).resolve())))
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


def load_named(name: str, overrides: Mapping[str, Any] | None = None) -> Config:
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


def loads(text: str) -> Config:
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
