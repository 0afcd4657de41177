"""``paper-records`` on hostile files in the authors' format (issue 25, item 7): each one
raises one :class:`DataError` line naming the file (the existing malformed-file cases are in
``test_paper_records.py``; these are the probes beyond them), and the stage fails with that
line, never a traceback or a hang.

Found and fixed (``authors_records``): a FIFO, a directory, a link to ``/dev/zero`` or a link
loop were all reported as a "missing" file (the FIFO and the device would have been read
without end had they been opened); a sparse 3 GB file was read into memory (31 s here, more
memory than a machine may have); an integer past 2⁶³ (``1e30``) wrapped to
-9223372036854775808 with a numpy RuntimeWarning; a negative certified radius was accepted;
a field quoted with an unbalanced ``"`` was quoted whole (the rest of the file) in the message.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from abstain import cli
from abstain.authors_records import MAX_BYTES, read_authors_csv
from abstain.errors import DataError

from test_paper_records import N, Y, make_checkout, write_apgd, write_smoothing

NAME = "testset_cifar10_Linf_apgd.csv"
SMOOTH = "smoothing/testset_smooth0.12_N0100_N100000.csv"


def _good_lines(tmp_path: Path) -> list[str]:
    return write_apgd(tmp_path / "g" / NAME, "M", Y, {1: np.ones(N, bool)}).read_text().splitlines()


def _with(lines: list[str], row: int, col: int, value: str) -> str:
    out = list(lines)
    parts = out[row].split(",")
    parts[col] = value
    out[row] = ",".join(parts)
    return "\n".join(out) + "\n"


def _sparse(f: Path, text: str) -> None:
    with open(f, "wb") as fh:
        fh.write(text.encode())
        fh.truncate(3 * 2**30)      # 3 GB, no blocks on disk


# (case, how the file is made from the good lines, what the error says)
CASES = {
    "nan_flag": (lambda L, f: f.write_text(_with(L, 3, 2, "nan")), "expected 0 or 1"),
    "nan_index": (lambda L, f: f.write_text(_with(L, 3, 1, "nan")), "non-integer"),
    "inf_pred": (lambda L, f: f.write_text(_with(L, 3, 4, "inf")), "non-integer"),
    "huge_index": (lambda L, f: f.write_text(_with(L, 3, 1, "1e30")), "out of range"),
    "huge_pred": (lambda L, f: f.write_text(_with(L, 3, 4, "99999999999999999999")), "out of range"),
    "empty_field": (lambda L, f: f.write_text(_with(L, 3, 4, "")), "expected integers"),
    "long_field": (lambda L, f: f.write_text(_with(L, 3, 4, "1" * 200_000)), "field larger than field limit"),
    "open_quote": (lambda L, f: f.write_text(_with(L, 3, 4, '"5')), "expected integers"),
    "latin1": (lambda L, f: f.write_bytes(("\n".join(L) + "\n").replace("M_", "Mé_").encode("latin-1")),
               "not UTF-8"),
    "wrong_columns": (lambda L, f: f.write_text("\n".join(",".join(x.split(",")[:2] + ["x", "y"]) for x in L) + "\n"),
                      "no <model>_is_acc"),
    "duplicate_ids": (lambda L, f: f.write_text(_with(L, 9, 1, "3")), "duplicate sample_idx 3"),
    "truncated_mid_row": (lambda L, f: f.write_text("\n".join(L)[:-7]), "truncated"),
    "fifo": (lambda L, f: os.mkfifo(f), "is a FIFO"),
    "directory": (lambda L, f: f.mkdir(), "is a directory"),
    "link_to_dev_zero": (lambda L, f: f.symlink_to("/dev/zero"), "is a device"),
    "link_loop": (lambda L, f: f.symlink_to(f), "Too many levels of symbolic links"),
    "sparse_3GB": (lambda L, f: _sparse(f, "\n".join(L) + "\n"), f"more than the {MAX_BYTES:,} allowed"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_hostile_authors_file_is_one_line_naming_it(tmp_path, case):
    make, expect = CASES[case]
    f = tmp_path / "bad" / NAME
    f.parent.mkdir()
    make(_good_lines(tmp_path), f)
    with pytest.raises(DataError, match=expect) as e:
        read_authors_csv(f)
    msg = str(e.value)
    assert str(f) in msg and "\n" not in msg and len(msg) < 400, msg


@pytest.mark.parametrize("column", ["l2_radius", "linf_radius"])
def test_a_negative_certified_radius_is_refused(tmp_path, column):
    f = write_smoothing(tmp_path / "run" / SMOOTH, np.arange(10), Y[:10], Y[:10], np.linspace(-1.0, 1.0, 10))
    lines = f.read_text().splitlines()
    j = lines[0].split(",").index(column)
    rows = [lines[0]] + [",".join(p if k != j else ("-0.5" if i == 2 else "0.5") for k, p in enumerate(x.split(",")))
                         for i, x in enumerate(lines[1:])]
    # the other radius column stays non-negative, so the refusal names this one
    other = "linf_radius" if column == "l2_radius" else "l2_radius"
    m = rows[0].split(",").index(other)
    rows = [rows[0]] + [",".join(p if k != m else "0.5" for k, p in enumerate(x.split(","))) for x in rows[1:]]
    f.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=f"column {column} holds -0.5, a certified radius is >= 0"):
        read_authors_csv(f)


def test_the_stage_fails_on_a_fifo_in_the_checkout_with_its_one_line(tmp_path, capsys):
    make_checkout(tmp_path / "data")
    f = next((tmp_path / "data").rglob(NAME))
    f.unlink()
    os.mkfifo(f)
    out = tmp_path / "out"
    rc = cli.main(["reproduce", "--scale", "paper", "--only", "paper-records", "--data-root", str(tmp_path / "data"),
                   "--out", str(out), "--no-report"])
    err = capsys.readouterr().err
    assert rc == 1          # a failed stage (the pipeline's code for it), not a crash
    assert "Traceback" not in err
    assert f"stage paper-records: authors' records file {f} is a FIFO, not a regular file" in err
    assert not (out / "paper-records" / "results.json").exists()
