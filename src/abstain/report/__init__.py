"""The report of an ``abstain reproduce`` directory: ``DIR/report.md`` and ``DIR/report.html``.

:func:`build_report` only READS: every table number comes from the stages' ``report(stage_dir)``
functions, which recompute it from the per-sample records under ``DIR/<stage>/records/``;
images are the figures the stages wrote. ``results.json`` is read only for its ``meta``
(versions, device, seeds, ε, norm, wall time) in the environment section. No model is
loaded or evaluated, so ``abstain report DIR`` works on results copied from another machine.
"""
from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import claims
from .. import __version__
from ..errors import DataError
from ..io import atomic_write_text, read_json
from ..pipeline import is_done
from ..safefiles import check_regular
from .. import stages  # stages.STAGES is read at call time (tests register fake stages)
from ..stages import get as get_stage
from ..utils import fmt_seconds
from .render import Section, render_html, render_markdown

STATUS_TEXT = {
    "failed": "failed",
    "skipped": "skipped",
    "interrupted": "interrupted",
    "running": "interrupted",
}


def _stage_order(out: Path, manifest: dict[str, Any]) -> list[str]:
    known = [st.name for st in stages.STAGES]
    seen = set(manifest.get("stages", {}) or {})
    seen |= {p.name for p in out.iterdir() if p.is_dir() and ((p / ".done").exists()
                                                              or (p / "results.json").exists())}
    return [n for n in known if n in seen] + sorted(seen - set(known))


def _meta(stage_dir: Path) -> dict[str, Any]:
    try:
        meta = read_json(stage_dir / "results.json").get("meta", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _list(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, (list, tuple)):
        return ", ".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v)
    return f"{v:g}" if isinstance(v, float) else str(v)


def _seconds(v: Any) -> str:
    if not isinstance(v, (int, float)):
        return "–"
    return f"{fmt_seconds(v)} ({v:.1f} s)"


MAX_STAGE_FILE = 256 * 2**20      # a stage's records of 10k samples are a few MB


def unreadable(out: Path, sdir: Path) -> str | None:
    """Why the files of a stage directory that the report reads (``.done``, ``results.json``,
    ``records/*``) cannot be read safely, or None: each must be a regular file of at most
    :data:`MAX_STAGE_FILE` bytes inside the run directory once links are resolved. A FIFO
    blocked the report forever, a sparse 3 GB ``results.json`` was read whole, and a records
    file linked to a file elsewhere would put that file's first line into the report."""
    rdir = sdir / "records"
    files = [sdir / ".done", sdir / "results.json"]
    if rdir.is_dir() and not rdir.is_symlink():
        files += sorted(rdir.iterdir())
    elif os.path.lexists(rdir):
        files.append(rdir)
    root = out.resolve()
    for f in files:
        if not os.path.lexists(f):
            continue
        try:
            real = f.resolve(strict=True)
        except (OSError, RuntimeError):
            return f"{f} is a broken or looping link"
        if root not in real.parents:
            return f"{f} links outside the run directory"
        try:
            check_regular(f, MAX_STAGE_FILE, "file", DataError)
        except DataError as e:
            return str(e)
    return None


def _stage_section(out: Path, name: str, entry: dict) -> tuple[Section, str]:
    """The section of stage ``name`` (its report blocks, or why there are none) and its status."""
    sdir = out / name
    stage = get_stage(name)
    sec = Section(name=name, title=stage.title if stage else name, base=sdir, link=name, root=out)
    why = unreadable(out, sdir)
    if why:
        sec.notes.append(f"not shown: {why}")
        return sec, "unreadable"
    if not is_done(sdir):
        st = STATUS_TEXT.get(entry.get("status", ""), entry.get("status") or "not run")
        reason = entry.get("reason") or entry.get("error") or ""
        if st == "interrupted":
            reason = "rerun the same `abstain reproduce` command to finish it"
        sec.notes.append(f"stage **{st}**" + (f": {reason}" if reason else "")
                         + "; no results from it in this report.")
        return sec, st
    if stage is None:
        sec.notes.append(f"`{name}` is not a stage of this version of abstain, so its tables "
                         "cannot be recomputed from the records")
    else:
        try:
            sec.blocks = list(stage.report(sdir) or [])
        except Exception as e:  # noqa: BLE001 - one broken stage must not hide the rest
            sec.notes.append(f"the stage's report failed: {type(e).__name__}: {e}")
    return sec, "done"


def _record_rows(name: str, rdir: Path) -> list[list[str]]:
    """One row per records file of a stage: its name, row count and first columns."""
    rows = []
    for f in sorted(rdir.glob("*.csv")):
        with open(f) as fh:
            header = fh.readline().strip()
            n = sum(1 for _ in fh)
        cols = header.split(",")
        rows.append([f"{name}/records/{f.name}", str(n), ", ".join(cols[:8]) + (", …" if len(cols) > 8 else "")])
    return rows


def _environment(out: Path, metas: dict[str, dict], statuses: dict[str, str],
                 rec_rows: list[list[str]]) -> Section:
    """The appendix of versions, stage times and the records behind the tables."""
    versions: dict[str, set[str]] = {}
    env_rows = []
    for name, st in statuses.items():
        meta = metas.get(name, {})
        for k, v in (meta.get("versions") or {}).items():
            versions.setdefault(k, set()).add(str(v))
        env_rows.append([name, st, _seconds(meta.get("seconds")), _seconds(meta.get("cpu_seconds")),
                         str(meta.get("device", "–")),
                         _list(meta.get("seeds")), _list(meta.get("eps")), _list(meta.get("norm")),
                         str(meta.get("finished", "–"))])
    total = sum(float(m.get("seconds", 0) or 0) for m in metas.values())
    env = Section(name="environment", title="Environment", base=out, link="", root=out)
    env.blocks.append({"kind": "text", "text": "Versions: " + (", ".join(
        f"{k} {' / '.join(sorted(v))}" for k, v in sorted(versions.items())) or "–")
        + f". Total wall time of the finished stages: {_seconds(total)}."})
    env.blocks.append({"kind": "table", "caption": "Stages (from each results.json's meta)",
                       "columns": ["stage", "status", "wall time", "CPU time", "device", "seeds", "ε", "norm",
                                   "finished (UTC)"], "rows": env_rows, "paper": None})
    if rec_rows:
        env.blocks.append({"kind": "table", "caption": "Per-sample records behind the tables",
                           "columns": ["file", "rows", "columns"], "rows": rec_rows, "paper": None})
    return env


def _intro(out: Path, demo: bool, missing: list[str]) -> list[str]:
    intro = [
        "Reproduction of *Avoiding Robust Misclassifications for Improved Robustness without "
        f"Accuracy Loss* with `abstain` {__version__}, generated "
        f"{datetime.now(timezone.utc).isoformat(timespec='seconds')} from `{out}`.",
        "Every number in the stage tables is recomputed from the per-sample records "
        "(`<stage>/records/*.csv`, beside this report) by the stage's report function. "
        "Where a table has a column marked *(paper)*, it holds the paper's number next to ours; "
        "the miniature (`digits`, `gauss3`) results are comparable to the paper only in the "
        "direction of each claim.",
    ]
    if demo:
        intro.append("This is a **demo** run (`--demo`: few seeds, short training); "
                     "`abstain reproduce --scale mini` runs every seed.")
    if missing:
        intro.append("> Not in this report: " + ", ".join(missing) + ".")
    return intro


def collect(out_dir: str | os.PathLike) -> tuple[str, list[str], list[Section], list[Section]]:
    """Gather the report's title, intro paragraphs, stage sections and appendix sections."""
    out = Path(out_dir)
    if not out.is_dir():
        raise DataError(f"no such run directory {out}")
    manifest: dict[str, Any] = {}
    if (out / "pipeline.json").is_file():
        try:
            manifest = read_json(out / "pipeline.json")
        except (OSError, ValueError, RecursionError):
            manifest = {}
    status = manifest.get("stages", {}) or {}
    names = _stage_order(out, manifest)
    if not names:
        raise DataError(f"{out} holds no stage results (run `abstain reproduce --out {out}` first)")
    sections: list[Section] = []
    statuses: dict[str, str] = {}
    metas: dict[str, dict] = {}
    rec_rows: list[list[str]] = []
    missing: list[str] = []
    for name in names:
        entry = status.get(name, {}) if isinstance(status.get(name), dict) else {}
        sec, statuses[name] = _stage_section(out, name, entry)
        sections.append(sec)
        if statuses[name] != "done":
            missing.append(f"`{name}` ({statuses[name]})")
            continue
        metas[name] = _meta(out / name)
        if (out / name / "records").is_dir():
            rec_rows += _record_rows(name, out / name / "records")
    claims_sec = Section(name="claims", title="The paper's claims", base=out, link="", root=out,
                         blocks=claims.blocks(out))
    demo = bool(manifest.get("demo", False))
    title = f"abstain — reproduction report ({manifest.get('scale', 'mini')} scale{', demo' if demo else ''})"
    return title, _intro(out, demo, missing), sections, [claims_sec, _environment(out, metas, statuses, rec_rows)]


def build_report(out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``DIR/report.md`` and ``DIR/report.html`` from the records; return their paths."""
    out = Path(out_dir)
    title, intro, sections, appendix = collect(out)
    md = render_markdown(title, intro, sections, appendix)
    page = render_html(title, intro, sections, appendix)
    md_path = atomic_write_text(out / "report.md", md)
    html_path = atomic_write_text(out / "report.html", page)
    return md_path, html_path


__all__ = ["build_report", "collect", "TITLES"]
