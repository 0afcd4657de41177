"""``abstain report`` on stage directories whose files are not what they claim (issue 25,
item 7; the hostile ``results.json`` *contents* are in ``test_hostile_probes``).

The report runs in a subprocess (``pipeline_fakes.py report DIR``, the fake stages
installed) with a timeout, since the defects found were hangs: a FIFO in place of
``results.json``, of ``.done`` or of a records file blocked it forever, and a sparse 3 GB
``results.json`` was read whole. And a records file linked to a file elsewhere
(``/etc/passwd``) put that file's first line into the report's list of records. Fixed in
``report.unreadable``: such a stage is shown with a note and the rest of the report is built.
Figures (links out of the run, FIFOs, directories, ``/dev/zero``) already held.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import pipeline_fakes

from reliability_helpers import cli_env

HERE = Path(__file__).resolve().parent
SECRET = "root:x:0:0"


def _sparse(f: Path) -> None:
    with open(f, "r+b") as fh:
        fh.truncate(3 * 2**30)


def _replace(f: Path, make) -> None:
    f.unlink()
    make(f)


CASES = {
    "results_fifo": ("results.json", lambda f: _replace(f, os.mkfifo), "is a FIFO"),
    "results_sparse_3GB": ("results.json", _sparse, "more than the"),
    "done_fifo": (".done", lambda f: _replace(f, os.mkfifo), "is a FIFO"),
    "records_fifo": ("records/eval-s0.csv", lambda f: _replace(f, os.mkfifo), "is a FIFO"),
    "records_link_out": ("records/eval-s0.csv", lambda f: _replace(f, lambda p: p.symlink_to("/etc/passwd")),
                         "links outside the run directory"),
    "records_dir_link_out": ("records", None, "links outside the run directory"),
    "records_link_loop": ("records/eval-s0.csv", lambda f: _replace(f, lambda p: p.symlink_to(p)),
                          "broken or looping link"),
    "figure_link_out": ("figure.png", lambda f: _replace(f, lambda p: p.symlink_to("/etc/passwd")),
                        "lies outside the run directory"),
    "figure_fifo": ("figure.png", lambda f: _replace(f, os.mkfifo), "is not an image file"),
    "figure_dir": ("figure.png", lambda f: _replace(f, Path.mkdir), "is not an image file"),
    "figure_dev_zero": ("figure.png", lambda f: _replace(f, lambda p: p.symlink_to("/dev/zero")),
                        "lies outside the run directory"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_report_on_a_stage_with_a_hostile_file_finishes_and_says_why(case, monkeypatch, tmp_path):
    run = pipeline_fakes.fake_run(monkeypatch, tmp_path)
    rel, make, why = CASES[case]
    target = run / "b" / rel
    if make is None:          # the whole records directory is a link to another directory
        import shutil

        elsewhere = tmp_path / "elsewhere"
        shutil.move(str(target), elsewhere)
        target.symlink_to(elsewhere)
    else:
        make(target)
    env = cli_env({"PYTHONPATH": os.pathsep.join([str(HERE), cli_env()["PYTHONPATH"]])})
    r = subprocess.run([sys.executable, str(HERE / "pipeline_fakes.py"), "report", str(run)], capture_output=True,
                       text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    md, page = (run / "report.md").read_text(), (run / "report.html").read_text()
    assert why in md, md[:3000]
    assert SECRET not in md and SECRET not in page
    assert md.count("four-way partition") >= 3          # a, c and d keep their tables
