"""Probes of the rest of the surface (issue 25, item 7), each kept as a test: an output path
through a symlink, an output path that is a file behind a link, and ``abstain report`` on
hostile ``results.json`` files (NaN, huge and negative numbers, HTML in every string field)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import pipeline_fakes
from abstain.outputs import LOCK

from reliability_helpers import assert_clean_refusal, one_thread, run_main, train_tiny_run  # noqa: F401

EVAL = ["--eps", "0.05", "--steps", "2", "--samples", "10", "--device", "cpu"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("probes"))


def test_an_output_path_through_a_symlink_writes_into_its_target(trained, tmp_path, capsys):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    rc, _, err = run_main(["evaluate", "--run", trained / "run", "--out", tmp_path / "link", *EVAL], capsys)
    assert rc == 0, err
    assert (real / "records" / "evaluate.csv").is_file() and not (real / LOCK).exists()
    assert (tmp_path / "link").is_symlink()


def test_an_output_path_that_links_to_a_file_is_one_line(trained, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "file")
    rc, _, err = run_main(["evaluate", "--run", trained / "run", "--out", tmp_path / "link", *EVAL], capsys)
    assert rc == 2
    assert_clean_refusal(rc, err, "not a directory")
    assert (tmp_path / "file").read_text() == "x"


HOSTILE_STR = "<script>alert(1)</script><img src=x onerror=alert(2)>[x](javascript:alert(3))"
HOSTILE_NUMBERS = [math.nan, math.inf, -math.inf, 1e308, -5.0, -1e-300, 10**30]


def _poison(obj):
    """Every string replaced by HTML, every number by a hostile one (cycled)."""
    it = iter(HOSTILE_NUMBERS * 1000)

    def walk(v):
        if isinstance(v, dict):
            return {HOSTILE_STR + k if k == "meta" else k: walk(x) for k, x in v.items()} | (
                {"meta": walk(v["meta"])} if "meta" in v else {})
        if isinstance(v, list):
            return [walk(x) for x in v]
        if isinstance(v, str):
            return HOSTILE_STR
        if isinstance(v, bool) or v is None:
            return v
        if isinstance(v, (int, float)):
            return next(it)
        return v

    return walk(obj)


@pytest.fixture
def run_dir(monkeypatch, tmp_path) -> Path:
    return pipeline_fakes.fake_run(monkeypatch, tmp_path)


def test_report_on_hostile_results_json_is_inert(run_dir, capsys):
    poisoned = 0
    for p in run_dir.rglob("results.json"):
        p.write_text(json.dumps(_poison(json.loads(p.read_text())), allow_nan=True))
        poisoned += 1
    assert poisoned
    rc, _, err = run_main(["report", run_dir], capsys)
    assert rc == 0, err
    page = (run_dir / "report.html").read_text()
    assert "<script>alert" not in page and "<img src=x" not in page
    assert 'href="javascript' not in page.lower()


def test_report_on_a_results_json_that_is_not_an_object(run_dir, capsys):
    files = sorted(run_dir.rglob("results.json"))
    files[0].write_text("[1, 2, 3]")
    files[-1].write_text("{not json")
    rc, _, err = run_main(["report", run_dir], capsys)
    assert rc in (0, 2), err
    assert "Traceback" not in err
