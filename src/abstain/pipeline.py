"""The pipeline behind ``abstain reproduce``: run experiment stages in order, cached and resumable.

Each stage (``abstain.stages``, DESIGN.md "Experiments and their results") writes into
``DIR/<stage>/``::

    DIR/<stage>/.started       hash of the attempt in progress (written first)
    DIR/<stage>/work/          checkpoints of trained models (kept across interruptions)
    DIR/<stage>/records/*.csv  per-sample records (every reported number comes from these)
    DIR/<stage>/results.json   the stage's results plus ``meta`` (seeds, eps, norm, versions, ...)
    DIR/<stage>/.done          hash of the finished stage, written LAST (atomically)
    DIR/pipeline.json          status of every stage the pipeline has seen in DIR

A stage's hash covers its configuration ``stage.config(scale, demo)``, the hashes of the
stages it depends on, and the package version. On a rerun a stage whose ``.done`` holds the
current hash is skipped; any other stage is rerun after clearing its old outputs. Its
``work/`` directory survives only when ``.started`` holds the current hash, i.e. when the
same configuration was interrupted: the stage then resumes from its checkpoints
(``abstain.train.fit`` continues from the last finished epoch). A stage whose module is not
importable yet is reported as "not available", and so are the stages depending on it.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from . import __version__
from . import stages as stages_pkg
from .errors import AbstainError, ConfigError, DataError
from .io import atomic_write_json, atomic_write_text, read_json

SCALES = ("mini", "paper")
DONE = ".done"
STARTED = ".started"
PIPELINE_JSON = "pipeline.json"

# Rough wall time of each stage, (demo, full) seconds: only used to turn "stages left" into
# an estimate of time left before a stage has run once in DIR. Demo values: measured on a
# shared 2-core machine (2026-11-25); full values: demo × the growth of seeds/epochs/samples
# of the full config. The estimate is rescaled by how fast the finished stages of this run
# were against it, and a stage that already ran in DIR with the same hash uses its own time.
EXPECTED_SECONDS: dict[str, tuple[float, float]] = {
    "fig1": (60.0, 900.0),
    "digits-partition": (40.0, 300.0),
    "digits-finetune": (60.0, 900.0),
    "digits-certify": (170.0, 1800.0),
    "digits-abstain": (100.0, 500.0),
    "digits-compose": (5.0, 20.0),
}
_DEFAULT_EXPECTED = (60.0, 600.0)


def stage_table(scale: str) -> dict[str, str]:
    """Stage name -> module for ``scale`` ("mini": ``STAGES``, "paper": ``PAPER_STAGES``)."""
    if scale not in SCALES:
        raise ConfigError(f"unknown scale {scale!r}; expected one of {', '.join(SCALES)}")
    return dict(stages_pkg.STAGES if scale == "mini" else stages_pkg.PAPER_STAGES)


def load_stage(name: str) -> Any | None:
    """The stage module (or object) for ``name``; None when its module does not exist yet."""
    table = {**stages_pkg.STAGES, **stages_pkg.PAPER_STAGES}
    target = f"{stages_pkg.__name__}.{table[name].split(':')[0]}"
    try:
        return stages_pkg.stage_module(name)
    except ModuleNotFoundError as e:
        if e.name == target:
            return None
        raise


def resolve(scale: str, only: Sequence[str] | None = None) -> list[str]:
    """Stages to run for ``scale``, in pipeline order, including what ``only`` depends on.

    Unknown names raise :class:`ConfigError` listing the known stages.
    """
    table = stage_table(scale)
    if not only:
        return list(table)
    unknown = [n for n in only if n not in table]
    if unknown:
        other = stage_table("paper" if scale == "mini" else "mini")
        hint = [f"{n!r} is a {('paper' if scale == 'mini' else 'mini')}-scale stage (use --scale "
                f"{'paper' if scale == 'mini' else 'mini'})" for n in unknown if n in other]
        raise ConfigError(
            f"unknown stage{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} for "
            f"--scale {scale}; known stages: {', '.join(table) or '(none)'}"
            + (f"; {'; '.join(hint)}" if hint else ""))
    wanted: set[str] = set()

    def visit(n: str, chain: tuple[str, ...]) -> None:
        if n in chain:
            raise ConfigError(f"stage dependency cycle: {' -> '.join(chain + (n,))}")
        if n in wanted:
            return
        wanted.add(n)
        try:
            mod = load_stage(n) if n in table else None
        except Exception:  # noqa: BLE001 - reported by plan() as a failed stage
            mod = None
        for d in getattr(mod, "DEPENDS", ()) if mod is not None else ():
            if d not in table:
                raise ConfigError(f"stage {n!r} depends on unknown stage {d!r}")
            visit(d, chain + (n,))

    for n in only:
        visit(n, ())
    return [n for n in table if n in wanted]


def stage_hash(name: str, config: Any, dep_hashes: dict[str, str]) -> str:
    """sha256 over the stage's config, its dependencies' hashes and the package version."""
    blob = json.dumps({"stage": name, "config": config, "deps": dep_hashes, "abstain": __version__},
                      sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class StagePlan:
    """One stage as planned: its module, config, hash and (if it cannot run) why not."""

    name: str
    module: Any | None
    config: dict | None = None
    hash: str | None = None
    depends: tuple[str, ...] = ()
    unavailable: str | None = None     # reason the stage cannot run (its code is not there)
    error: str | None = None           # its module or config is broken: counted as failed


def plan(scale: str, demo: bool, only: Sequence[str] | None = None) -> list[StagePlan]:
    """Resolve the stages, load their modules, configs and hashes (dependencies first)."""
    names = resolve(scale, only)
    plans: dict[str, StagePlan] = {}
    for n in names:
        module = (stages_pkg.PAPER_STAGES.get(n) or stages_pkg.STAGES.get(n, n)).split(":")[0]
        try:
            mod = load_stage(n)
        except Exception as e:  # noqa: BLE001 - a broken stage must not stop the others
            plans[n] = StagePlan(n, None, error=f"abstain.stages.{module} failed to import: "
                                                f"{type(e).__name__}: {e}")
            continue
        if mod is None:
            plans[n] = StagePlan(n, None, unavailable=f"its module abstain.stages.{module} "
                                                      "does not exist yet")
            continue
        deps = tuple(getattr(mod, "DEPENDS", ()))
        p = StagePlan(n, mod, depends=deps)
        missing = [d for d in deps if d not in plans or plans[d].unavailable]
        broken = [d for d in deps if d in plans and plans[d].error]
        if missing:
            p.unavailable = f"it needs {', '.join(missing)}, which is not available"
        elif broken:
            p.error = f"it needs {', '.join(broken)}, which is broken"
        else:
            try:
                p.config = mod.config(scale, demo)
                p.hash = stage_hash(n, p.config, {d: plans[d].hash for d in deps})
            except Exception as e:  # noqa: BLE001
                if isinstance(e, AbstainError):
                    raise
                p.error = f"its config({scale!r}, {demo}) failed: {type(e).__name__}: {e}"
        plans[n] = p
    return [plans[n] for n in names]


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None


def is_done(stage_dir: Path, h: str | None = None) -> bool:
    """A stage directory is finished (for hash ``h``, if given)."""
    marker = _read_text(stage_dir / DONE)
    if marker is None or not (stage_dir / "results.json").is_file():
        return False
    return h is None or marker == h


def _clear(stage_dir: Path, keep_work: bool) -> None:
    """Remove a stage directory's outputs (the ``.done`` marker first), keeping ``work/`` if asked."""
    if not stage_dir.exists():
        return
    (stage_dir / DONE).unlink(missing_ok=True)
    for child in stage_dir.iterdir():
        if keep_work and child.name in ("work", STARTED):
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and device for ``results.json``'s meta and the report."""
    import numpy as np

    dev = str(device)
    if device.type == "cuda" and torch.cuda.is_available():
        dev = f"{dev} ({torch.cuda.get_device_name(device)})"
    else:
        dev = f"{dev} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "\
              f"{torch.get_num_threads()} torch threads)"
    return {
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "numpy": np.__version__, "abstain": __version__},
        "device": dev,
        "platform": platform.platform(),
    }


def _fmt_seconds(s: float) -> str:
    s = max(0.0, float(s))
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


def summarize(results: dict[str, Any], width: int = 150) -> str:
    """One line of the headline metrics of a stage's results."""
    keys = (("nat_acc", "nat"), ("rob_acc", "rob_acc"), ("rob_inacc", "rob_inacc"),
            ("rob_sel", "rob_sel"), ("coverage", "cov"))
    parts = []
    for variant, metrics in results.items():
        if variant == "meta" or not isinstance(metrics, dict):
            continue
        vals = [f"{short} {metrics[k]:.3f}" for k, short in keys
                if isinstance(metrics.get(k), (int, float))]
        if vals:
            parts.append(f"{variant}: {' '.join(vals)}")
    line = "; ".join(parts)
    return line if len(line) <= width else line[: width - 1] + "…"


@contextmanager
def _lock(out: Path) -> Iterator[None]:
    """One ``abstain reproduce`` per output directory at a time."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    fh = open(out / ".lock", "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise AbstainError(f"another `abstain reproduce` is writing to {out}; wait for it to "
                               "finish or use another --out") from None
        yield
    finally:
        fh.close()


@dataclass
class PipelineResult:
    """What happened to each planned stage: ``done`` (ran now), ``cached``, ``unavailable``,
    ``failed`` (with the error), in pipeline order."""

    out: Path
    status: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors


def _update_manifest(out: Path, scale: str, demo: bool, entries: dict[str, dict]) -> None:
    path = out / PIPELINE_JSON
    data: dict[str, Any] = {}
    if path.is_file():
        try:
            data = read_json(path)
        except (ValueError, OSError):
            data = {}
    stages = data.get("stages", {}) if isinstance(data.get("stages"), dict) else {}
    stages.update(entries)
    data.update({"scale": scale, "demo": demo, "abstain": __version__, "stages": stages,
                 "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    atomic_write_json(path, data)


def missing_data(plans: Sequence[StagePlan], data_root: Path | None) -> list[str]:
    """Ask each stage (optional ``missing_data(config, data_root)``) which inputs are missing."""
    lines: list[str] = []
    for p in plans:
        fn = getattr(p.module, "missing_data", None)
        if p.unavailable or p.error or fn is None:
            continue
        for line in fn(p.config, data_root):
            if line not in lines:
                lines.append(line)
    return lines


def run_pipeline(out: str | os.PathLike, *, scale: str = "mini", demo: bool = False,
                 only: Sequence[str] | None = None, device: str | torch.device = "auto",
                 data_root: str | os.PathLike | None = None, quiet: bool = False,
                 force: bool = False, raise_errors: bool = False,
                 log: Callable[[str], None] | None = None) -> PipelineResult:
    """Run the stages of ``scale`` (or ``only`` those and their dependencies) into ``out``.

    Finished stages whose hash matches are skipped; ``force`` reruns the selected stages from
    scratch (dependencies stay cached). A stage that raises is recorded as failed (its
    dependents are skipped) and the others go on, unless ``raise_errors``. KeyboardInterrupt
    propagates after the interrupted stage's ``.done`` was left unwritten, so rerunning the
    same command continues.
    """
    from .utils import progress, resolve_device

    out = Path(out)
    dev = resolve_device(device)
    root = Path(data_root) if data_root is not None else None
    plans = plan(scale, demo, only)
    requested = set(only or ())
    if scale == "paper":
        missing = missing_data(plans, root)
        if missing:
            where = f"--data-root {root}" if root is not None else "no --data-root given"
            raise DataError(
                f"--scale paper needs data that is not there ({where}); missing:\n  - "
                + "\n  - ".join(missing)
                + "\nDownload these, then rerun with --data-root DIR (the directory holding them).")
    out.mkdir(parents=True, exist_ok=True)

    bar = progress(total=len(plans), desc="reproduce", leave=True, position=0, unit="stage",
                   disable=True if quiet else None,
                   bar_format="{desc}: {n_fmt}/{total_fmt} stages |{bar}| {elapsed} elapsed{postfix}")
    bars_on = not bar.disable

    def emit(msg: str) -> None:
        if log is not None:
            log(msg)
        elif bars_on:
            bar.write(msg, file=sys.stdout)
        else:
            print(msg, flush=True)

    def stage_progress(*a: Any, **kw: Any):
        kw.setdefault("position", 1)
        kw.setdefault("leave", False)
        if quiet:
            kw["disable"] = True
        return progress(*a, **kw)

    result = PipelineResult(out)
    env = environment(dev)
    previous = {}
    if (out / PIPELINE_JSON).is_file():
        try:
            previous = read_json(out / PIPELINE_JSON).get("stages", {})
        except (ValueError, OSError, AttributeError):
            previous = {}

    def expected(p: StagePlan) -> float:
        prev = previous.get(p.name, {}).get("seconds")
        if isinstance(prev, (int, float)) and prev > 0 and previous.get(p.name, {}).get("hash") == p.hash:
            return float(prev)
        return EXPECTED_SECONDS.get(p.name, _DEFAULT_EXPECTED)[0 if demo else 1]

    todo = [p for p in plans if not p.unavailable and not p.error and (force and (not requested or p.name in requested)
                                                       or not is_done(out / p.name, p.hash))]
    spent_actual = spent_expected = 0.0
    remaining_expected = sum(expected(p) for p in todo)

    def eta() -> str:
        scale_f = spent_actual / spent_expected if spent_expected > 0 else 1.0
        return _fmt_seconds(remaining_expected * scale_f)

    if todo:
        bar.set_postfix_str(f"~{eta()} left")
    failed: set[str] = set()
    with _lock(out):
        for i, p in enumerate(plans, 1):
            tag = f"[{i}/{len(plans)}] {p.name}"
            sdir = out / p.name
            if p.unavailable:
                result.status[p.name] = "unavailable"
                emit(f"{tag}: not available ({p.unavailable})")
                _update_manifest(out, scale, demo, {p.name: {"status": "unavailable",
                                                             "reason": p.unavailable}})
                bar.update(1)
                continue
            if p.error:
                if raise_errors:
                    bar.close()
                    raise AbstainError(f"stage {p.name}: {p.error}")
                failed.add(p.name)
                result.status[p.name] = "failed"
                result.errors[p.name] = p.error
                emit(f"{tag}: FAILED: {p.error}")
                _update_manifest(out, scale, demo, {p.name: {"status": "failed", "error": p.error}})
                bar.update(1)
                continue
            bad = [d for d in p.depends if d in failed]
            if bad:
                failed.add(p.name)
                result.status[p.name] = "skipped"
                result.errors[p.name] = f"skipped: {', '.join(bad)} failed"
                emit(f"{tag}: skipped because {', '.join(bad)} failed")
                _update_manifest(out, scale, demo, {p.name: {"status": "skipped", "hash": p.hash,
                                                             "reason": result.errors[p.name]}})
                bar.update(1)
                continue
            if p not in todo:
                result.status[p.name] = "cached"
                emit(f"{tag}: cached ({sdir}), skipped")
                bar.update(1)
                continue
            forced = force and (not requested or p.name in requested)
            resume = not forced and _read_text(sdir / STARTED) == p.hash
            _clear(sdir, keep_work=resume)
            sdir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(sdir / STARTED, p.hash + "\n")
            _update_manifest(out, scale, demo, {p.name: {"status": "running", "hash": p.hash}})
            bar.set_description(f"reproduce: {p.name}")
            ctx = stages_pkg.StageContext(name=p.name, out=sdir, root=out, scale=scale, demo=demo,
                                          device=dev, data_root=root, quiet=quiet,
                                          progress=stage_progress)
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                res = p.module.run(ctx, p.config)
                if not isinstance(res, dict):
                    raise TypeError(f"stage {p.name!r} returned {type(res).__name__}, expected a dict")
            except KeyboardInterrupt:
                _update_manifest(out, scale, demo, {p.name: {"status": "interrupted", "hash": p.hash}})
                bar.close()
                raise
            except Exception as e:  # noqa: BLE001 - a failing stage must not lose the others
                if raise_errors:
                    bar.close()
                    raise
                secs = time.perf_counter() - t0
                failed.add(p.name)
                msg = f"{type(e).__name__}: {e}" if not isinstance(e, AbstainError) else str(e)
                result.status[p.name] = "failed"
                result.errors[p.name] = msg
                emit(f"{tag}: FAILED after {_fmt_seconds(secs)}: {msg}")
                _update_manifest(out, scale, demo, {p.name: {"status": "failed", "hash": p.hash,
                                                             "error": msg, "seconds": secs}})
                remaining_expected -= expected(p)
                bar.update(1)
                continue
            secs = time.perf_counter() - t0
            meta = dict(res.get("meta") or {})
            for key in ("seeds", "eps", "norm"):
                if key not in meta and isinstance(p.config, dict) and key in p.config:
                    meta[key] = p.config[key]
            meta.update(env)
            meta.update({"seconds": secs, "cpu_seconds": time.process_time() - c0, "hash": p.hash, "config": p.config, "resumed": resume,
                         "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")})
            res = {**res, "meta": meta}
            atomic_write_json(sdir / "results.json", res)
            atomic_write_text(sdir / DONE, p.hash + "\n")     # LAST: the stage is finished
            (sdir / STARTED).unlink(missing_ok=True)
            result.status[p.name] = "done"
            result.seconds[p.name] = secs
            _update_manifest(out, scale, demo, {p.name: {"status": "done", "hash": p.hash,
                                                         "seconds": secs}})
            spent_actual += secs
            spent_expected += expected(p)
            remaining_expected -= expected(p)
            line = summarize(res)
            emit(f"{tag}: done in {_fmt_seconds(secs)}" + (f" — {line}" if line else "")
                 + (f" (~{eta()} left)" if remaining_expected > 0 else ""))
            bar.update(1)
            if remaining_expected > 0:
                bar.set_postfix_str(f"~{eta()} left")
    bar.set_description("reproduce")
    bar.close()
    return result


__all__ = ["run_pipeline", "plan", "resolve", "stage_hash", "is_done", "StagePlan",
           "PipelineResult", "summarize", "environment", "missing_data", "SCALES"]
