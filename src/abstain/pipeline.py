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
(``abstain.train.fit`` continues from the last finished epoch). A stage whose config cannot
be computed, or that raises, is reported as failed and the stages depending on it are skipped.

The pieces: :func:`plan` (which stages, their configs and hashes), :func:`run_stage` (one
stage into its directory), :class:`Progress` (bars, messages, time left) and
:func:`run_pipeline`, which walks the plan.
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import multiprocessing
import os
import platform
import shutil
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from . import __version__
from . import stages as stages_pkg
from .errors import AbstainError, ConfigError, DataError
from .io import atomic_write_json, atomic_write_text, read_json
from .outputs import DirLock, LOCK
from .safefiles import read_regular
from .stages.base import Stage, StageContext
from .utils import fmt_seconds, progress, resolve_device

SCALES = ("mini", "paper")
DONE = ".done"
STARTED = ".started"
PIPELINE_JSON = "pipeline.json"


def stage_table(scale: str) -> dict[str, Stage]:
    """Stage name -> :class:`Stage` for ``scale``, in pipeline order."""
    if scale not in SCALES:
        raise ConfigError(f"unknown scale {scale!r}; expected one of {', '.join(SCALES)}")
    return {s.name: s for s in stages_pkg.of_scale(scale)}


def resolve(scale: str, only: Sequence[str] | None = None) -> list[str]:
    """Stages to run for ``scale``, in pipeline order, including what ``only`` depends on.

    Unknown names raise :class:`ConfigError` listing the known stages.
    """
    table = stage_table(scale)
    if not only:
        return list(table)
    unknown = [n for n in only if n not in table]
    if unknown:
        other_scale = "paper" if scale == "mini" else "mini"
        other = stage_table(other_scale)
        hint = [f"{n!r} is a {other_scale}-scale stage (use --scale {other_scale})"
                for n in unknown if n in other]
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
        for d in table[n].depends:
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
    """One stage as planned: the stage, its config and hash, or why its config is broken."""

    stage: Stage
    config: dict | None = None
    hash: str | None = None
    error: str | None = None           # its config (or a dependency's) is broken: counted as failed

    @property
    def name(self) -> str:
        return self.stage.name

    @property
    def depends(self) -> tuple[str, ...]:
        return self.stage.depends


def plan(scale: str, demo: bool, only: Sequence[str] | None = None) -> list[StagePlan]:
    """Resolve the stages and compute their configs and hashes (dependencies first)."""
    table = stage_table(scale)
    plans: dict[str, StagePlan] = {}
    for n in resolve(scale, only):
        p = StagePlan(table[n])
        broken = [d for d in p.depends if plans[d].error]
        if broken:
            p.error = f"it needs {', '.join(broken)}, which is broken"
        else:
            try:
                p.config = p.stage.config(scale, demo)
                p.hash = stage_hash(n, p.config, {d: plans[d].hash for d in p.depends})
            except AbstainError:
                raise
            except Exception as e:  # noqa: BLE001 - a broken stage must not stop the others
                p.error = f"its config({scale!r}, {demo}) failed: {type(e).__name__}: {e}"
        plans[n] = p
    return list(plans.values())


def _read_text(path: Path) -> str | None:
    """A stage's marker (``.done``, ``.started``: a hash): None unless it is a small regular
    file (a FIFO there blocked ``reproduce``; issue 25)."""
    if not os.path.lexists(path):
        return None
    try:
        return read_regular(path, 4096, ValueError).decode("utf-8", "replace").strip()
    except (ValueError, OSError):
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
    """One writer per output directory at a time: the lock of every command
    (:class:`abstain.outputs.DirLock` on ``out/.abstain.lock``), so ``abstain reproduce`` and
    an ``abstain evaluate --out`` into the same directory exclude each other too."""
    held = DirLock(out / LOCK, str(out)).acquire()
    try:
        yield
    finally:
        held.release()


@dataclass
class PipelineResult:
    """What happened to each planned stage: ``done`` (ran now), ``cached``, ``failed`` (with
    the error) or ``skipped`` (a dependency failed), in pipeline order."""

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


def _previous_manifest(out: Path) -> dict[str, Any]:
    try:
        stages = read_json(out / PIPELINE_JSON).get("stages", {})
    except (ValueError, OSError, AttributeError):
        return {}
    return stages if isinstance(stages, dict) else {}


def missing_data(plans: Sequence[StagePlan], data_root: Path | None) -> list[str]:
    """Ask each stage (``Stage.missing_data(config, data_root)``) which inputs are missing."""
    lines: list[str] = []
    for p in plans:
        fn = p.stage.missing_data
        if p.error or fn is None:
            continue
        for line in fn(p.config, data_root):
            if line not in lines:
                lines.append(line)
    return lines


def check_data(scale: str, plans: Sequence[StagePlan], data_root: Path | None) -> None:
    """Raise :class:`DataError` listing every missing input of the planned stages."""
    missing = missing_data(plans, data_root)
    if missing:
        where = f"--data-root {data_root}" if data_root is not None else "no --data-root given"
        raise DataError(
            f"--scale {scale} needs data that is not there ({where}); missing:\n  - "
            + "\n  - ".join(missing)
            + "\nDownload these, then rerun with --data-root DIR (the directory holding them).")


class Progress:
    """The overall bar of ``abstain reproduce``, stage bars below it, messages, and the
    estimate of time left.

    Before a stage has run once in DIR its expected time is ``Stage.expected_seconds``; a
    stage that already ran in DIR with the same hash uses its own recorded time. The
    estimate is rescaled by how fast the finished stages of this run were against it.
    """

    def __init__(self, total: int, *, demo: bool, quiet: bool, previous: Mapping[str, Any],
                 log: Callable[[str], None] | None = None) -> None:
        self.demo, self.quiet, self.previous, self.log = demo, quiet, previous, log
        self.bar = progress(total=total, desc="reproduce", leave=True, position=0, unit="stage",
                            disable=True if quiet else None,
                            bar_format="{desc}: {n_fmt}/{total_fmt} stages |{bar}| {elapsed} "
                                       "elapsed{postfix}")
        self.spent_actual = self.spent_expected = self.remaining_expected = 0.0

    def expected(self, p: StagePlan) -> float:
        prev = self.previous.get(p.name, {})
        secs = prev.get("seconds") if isinstance(prev, dict) else None
        if isinstance(secs, (int, float)) and secs > 0 and prev.get("hash") == p.hash:
            return float(secs)
        return p.stage.expected_seconds[0 if self.demo else 1]

    def start(self, todo: Sequence[StagePlan]) -> None:
        self.remaining_expected = sum(self.expected(p) for p in todo)
        if todo:
            self.bar.set_postfix_str(f"~{self.eta()} left")

    def eta(self) -> str:
        factor = self.spent_actual / self.spent_expected if self.spent_expected > 0 else 1.0
        return fmt_seconds(self.remaining_expected * factor)

    def emit(self, msg: str) -> None:
        if self.log is not None:
            self.log(msg)
        elif not self.bar.disable:
            self.bar.write(msg, file=sys.stdout)
        else:
            print(msg, flush=True)

    @staticmethod
    def quiet_bar(*a: Any, **kw: Any):
        """A disabled bar (stages running in worker processes)."""
        kw.update({"disable": True, "leave": False})
        return progress(*a, **kw)

    def stage_bar(self, *a: Any, **kw: Any):
        """A progress bar for a stage's own loops (``StageContext.progress``)."""
        kw.setdefault("position", 1)
        kw.setdefault("leave", False)
        if self.quiet:
            kw["disable"] = True
        return progress(*a, **kw)

    def running(self, name: str) -> None:
        self.bar.set_description(f"reproduce: {name}")

    def finished(self, p: StagePlan, seconds: float | None) -> None:
        """One stage is over (``seconds`` None: it did not run now)."""
        if seconds is not None:
            exp = self.expected(p)
            self.spent_actual += seconds
            self.spent_expected += exp
            self.remaining_expected -= exp
            if self.remaining_expected > 0:
                self.bar.set_postfix_str(f"~{self.eta()} left")
        self.bar.update(1)

    def close(self) -> None:
        self.bar.set_description("reproduce")
        self.bar.close()


def run_stage(p: StagePlan, ctx: StageContext, env: Mapping[str, Any], resume: bool) -> dict[str, Any]:
    """Run one planned stage into ``ctx.out`` (already cleared and marked ``.started``) and
    write its ``results.json`` and, LAST, its ``.done`` marker. Returns the results."""
    t0, c0 = time.perf_counter(), time.process_time()
    res = p.stage.run(ctx, p.config)
    if not isinstance(res, dict):
        raise TypeError(f"stage {p.name!r} returned {type(res).__name__}, expected a dict")
    meta = dict(res.get("meta") or {})
    for key in ("seeds", "eps", "norm"):
        if key not in meta and isinstance(p.config, dict) and key in p.config:
            meta[key] = p.config[key]
    meta.update(env)
    meta.update({"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
                 "hash": p.hash, "config": p.config, "resumed": resume,
                 "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    res = {**res, "meta": meta}
    atomic_write_json(ctx.out / "results.json", res)
    atomic_write_text(ctx.out / DONE, p.hash + "\n")     # LAST: the stage is finished
    (ctx.out / STARTED).unlink(missing_ok=True)
    return res


def _prepare(out: Path, p: StagePlan, resume: bool) -> Path:
    """Clear the stage directory (keeping ``work/`` when resuming) and mark the attempt."""
    sdir = out / p.name
    _clear(sdir, keep_work=resume)
    sdir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(sdir / STARTED, p.hash + "\n")
    return sdir


def _error_text(e: BaseException) -> str:
    return str(e) if isinstance(e, AbstainError) else f"{type(e).__name__}: {e}"


def run_pipeline(out: str | os.PathLike, *, scale: str = "mini", demo: bool = False,
                 only: Sequence[str] | None = None, device: str | torch.device = "auto",
                 data_root: str | os.PathLike | None = None, quiet: bool = False,
                 force: bool = False, raise_errors: bool = False,
                 log: Callable[[str], None] | None = None, jobs: int = 1) -> PipelineResult:
    """Run the stages of ``scale`` (or ``only`` those and their dependencies) into ``out``.

    Finished stages whose hash matches are skipped; ``force`` reruns the selected stages from
    scratch (dependencies stay cached). A stage that raises is recorded as failed (its
    dependents are skipped) and the others go on, unless ``raise_errors``. KeyboardInterrupt
    propagates after the interrupted stage's ``.done`` was left unwritten, so rerunning the
    same command continues. ``jobs > 1`` runs up to that many independent stages at once, each
    in its own process (:func:`_run_parallel`); the records are the same as with one job,
    since every stage seeds its own work.
    """
    out = Path(out)
    dev = resolve_device(device)
    root = Path(data_root) if data_root is not None else None
    plans = plan(scale, demo, only)
    check_data(scale, plans, root)
    out.mkdir(parents=True, exist_ok=True)
    requested = set(only or ())

    def forced(p: StagePlan) -> bool:
        return force and (not requested or p.name in requested)

    todo = [p for p in plans if not p.error and (forced(p) or not is_done(out / p.name, p.hash))]
    prog = Progress(len(plans), demo=demo, quiet=quiet, previous=_previous_manifest(out), log=log)
    prog.start(todo)
    result = PipelineResult(out)
    env = environment(dev)

    def settle(p: StagePlan, status: str, message: str | None, error: str | None = None,
               entry: dict | None = None, seconds: float | None = None) -> None:
        result.status[p.name] = status
        if error is not None:
            result.errors[p.name] = error
        if status == "done" and seconds is not None:
            result.seconds[p.name] = seconds
        if entry is not None:
            _update_manifest(out, scale, demo, {p.name: entry})
        prog.finished(p, seconds)
        if message:
            prog.emit(message)

    try:
        with _lock(out):
            if jobs > 1 and not raise_errors:
                _run_parallel(plans, todo, out, scale, demo, dev, root, env, forced, prog, settle, jobs,
                              result)
                return result
            for i, p in enumerate(plans, 1):
                tag = f"[{i}/{len(plans)}] {p.name}"
                if p.error and raise_errors:
                    raise AbstainError(f"stage {p.name}: {p.error}")
                if not _settle_without_running(p, tag, todo, out, result, settle):
                    _run_one(p, tag, out, scale, demo, dev, root, quiet, env, forced(p), prog,
                             settle, raise_errors)
    finally:
        prog.close()
    return result


def _settle_without_running(p: StagePlan, tag: str, todo: Sequence[StagePlan], out: Path,
                            result: PipelineResult, settle: Callable[..., None]) -> bool:
    """Settle a stage that does not run (broken config: failed; a dependency failed: skipped;
    finished with this hash: cached). False when it must run."""
    bad = [d for d in p.depends if result.status.get(d) in ("failed", "skipped")]
    if p.error:
        settle(p, "failed", f"{tag}: FAILED: {p.error}", p.error, {"status": "failed", "error": p.error})
    elif bad:
        why = f"skipped: {', '.join(bad)} failed"
        settle(p, "skipped", f"{tag}: skipped because {', '.join(bad)} failed", why,
               {"status": "skipped", "hash": p.hash, "reason": why})
    elif p not in todo:
        settle(p, "cached", f"{tag}: cached ({out / p.name}), skipped")
    else:
        return False
    return True


def _begin(p: StagePlan, out: Path, scale: str, demo: bool, forced: bool) -> tuple[bool, Path]:
    """Start a stage: whether it resumes (an unfinished run of the same hash), its prepared
    directory, and ``running`` in the manifest."""
    resume = not forced and _read_text(out / p.name / STARTED) == p.hash
    sdir = _prepare(out, p, resume)
    _update_manifest(out, scale, demo, {p.name: {"status": "running", "hash": p.hash}})
    return resume, sdir


def _settle_failed(p: StagePlan, tag: str, seconds: float, e: BaseException, settle: Callable[..., None]) -> None:
    msg = _error_text(e)
    settle(p, "failed", f"{tag}: FAILED after {fmt_seconds(seconds)}: {msg}", msg,
           {"status": "failed", "hash": p.hash, "error": msg, "seconds": seconds}, seconds)


def _settle_done(p: StagePlan, tag: str, res: Mapping[str, Any], settle: Callable[..., None],
                 announce: bool = True) -> str:
    """Settle a finished stage; its one-line announcement (printed by ``settle`` unless
    ``announce`` is False)."""
    secs = float(res["meta"]["seconds"])
    line = summarize(dict(res))
    text = f"{tag}: done in {fmt_seconds(secs)}" + (f" — {line}" if line else "")
    settle(p, "done", text if announce else None, entry={"status": "done", "hash": p.hash, "seconds": secs},
           seconds=secs)
    return text


def _run_one(p: StagePlan, tag: str, out: Path, scale: str, demo: bool, dev: torch.device,
             root: Path | None, quiet: bool, env: Mapping[str, Any], forced: bool, prog: Progress,
             settle: Callable[..., None], raise_errors: bool) -> None:
    """Run one stage of the pipeline and settle its status (done or failed)."""
    resume, sdir = _begin(p, out, scale, demo, forced)
    prog.running(p.name)
    ctx = StageContext(name=p.name, out=sdir, root=out, scale=scale, demo=demo, device=dev,
                       data_root=root, quiet=quiet, progress=prog.stage_bar)
    t0 = time.perf_counter()
    try:
        res = run_stage(p, ctx, env, resume)
    except KeyboardInterrupt:
        _update_manifest(out, scale, demo, {p.name: {"status": "interrupted", "hash": p.hash}})
        raise
    except Exception as e:  # noqa: BLE001 - a failing stage must not lose the others
        if raise_errors:
            raise
        _settle_failed(p, tag, time.perf_counter() - t0, e, settle)
        return
    text = _settle_done(p, tag, res, settle, announce=False)
    prog.emit(text + (f" (~{prog.eta()} left)" if prog.remaining_expected > 0 else ""))


def _stage_worker(stage: Stage, config: dict, h: str, out: str, scale: str, demo: bool, device: str,
                  data_root: str | None, env: Mapping[str, Any], resume: bool) -> dict[str, Any]:
    """One stage in a worker process of :func:`_run_parallel` (the Stage arrives pickled: its
    functions by reference)."""
    os.environ["ABSTAIN_QUIET"] = "1"        # one overall bar, in the parent
    name = stage.name
    ctx = StageContext(name=name, out=Path(out) / name, root=Path(out), scale=scale, demo=demo,
                       device=torch.device(device), data_root=Path(data_root) if data_root else None,
                       quiet=True, progress=lambda *a, **kw: Progress.quiet_bar(*a, **kw))
    return run_stage(StagePlan(stage, config, h), ctx, env, resume)


def _exit_with_parent(poll_s: float = 0.05) -> None:
    """Initializer of the worker processes of :func:`_run_parallel`: a daemon thread that ends
    this worker at once (``os._exit``) when the pipeline process that spawned it is gone.

    The lock of the output directory belongs to the pipeline process; a SIGKILL of it releases
    the lock (:class:`abstain.outputs.DirLock`), and a worker left running would go on writing
    its stage (checkpoints, records, even ``.done``) while a rerun of the command, which now
    holds the lock, prepares the same stage (issue 25, item 7). Exiting leaves the stage as an
    interruption leaves it: resumable from ``work/``, without ``.done``.

    A worker also ignores SIGINT: Ctrl-C reaches the whole process group, and the pipeline
    process alone handles it (it stops the workers); a worker's own KeyboardInterrupt would
    print a traceback from the middle of ``concurrent.futures``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="abstain-parent-watch", daemon=True).start()


def _critical_path(p: StagePlan, plans: Sequence[StagePlan], prog: Progress) -> float:
    """The expected seconds of ``p`` plus those of its longest chain of dependents."""
    after = [q for q in plans if p.name in q.depends]
    return prog.expected(p) + max((_critical_path(q, plans, prog) for q in after), default=0.0)


def _run_parallel(plans: Sequence[StagePlan], todo: Sequence[StagePlan], out: Path, scale: str,
                  demo: bool, dev: torch.device, root: Path | None, env: Mapping[str, Any],
                  forced: Callable[[StagePlan], bool], prog: Progress, settle: Callable[..., None],
                  jobs: int, result: PipelineResult) -> None:
    """Run the plan with up to ``jobs`` stages at once: a stage starts when every stage it
    depends on is done or cached. Workers are spawned processes (no fork of a process that
    holds torch threads). On Ctrl-C the workers are stopped; their stages stay resumable."""
    pending = sorted(plans, key=lambda p: -_critical_path(p, plans, prog))   # longest chains first
    running: dict[cf.Future, tuple[StagePlan, str, float]] = {}
    n = len(plans)
    tags = {p.name: f"[{i}/{n}] {p.name}" for i, p in enumerate(plans, 1)}
    status = result.status.get        # set by settle()

    pool = cf.ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                                  initializer=_exit_with_parent)
    try:
        while pending or running:
            for p in list(pending):
                if any(status(d) is None for d in p.depends):
                    continue            # a dependency has not finished yet
                if _settle_without_running(p, tags[p.name], todo, out, result, settle):
                    pending.remove(p)
                elif len(running) < jobs:
                    resume, _ = _begin(p, out, scale, demo, forced(p))
                    fut = pool.submit(_stage_worker, p.stage, p.config, p.hash, str(out), scale, demo,
                                      str(dev), str(root) if root else None, dict(env), resume)
                    running[fut] = (p, tags[p.name], time.perf_counter())
                    pending.remove(p)
            if not running:
                continue
            done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                p, tag, t0 = running.pop(fut)
                try:
                    res = fut.result()
                except Exception as e:  # noqa: BLE001 - a failing stage must not lose the others
                    _settle_failed(p, tag, time.perf_counter() - t0, e, settle)
                    continue
                _settle_done(p, tag, res, settle)
    except KeyboardInterrupt:
        for p, _, _ in running.values():
            _update_manifest(out, scale, demo, {p.name: {"status": "interrupted", "hash": p.hash}})
        procs = list(getattr(pool, "_processes", {}).values())
        for proc in procs:
            proc.terminate()
        for proc in procs:      # gone before the command reports the interruption
            proc.join(10)
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


__all__ = ["run_pipeline", "plan", "resolve", "stage_hash", "is_done", "StagePlan", "Progress",
           "run_stage", "PipelineResult", "summarize", "environment", "missing_data", "SCALES"]
