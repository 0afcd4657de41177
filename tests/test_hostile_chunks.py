"""Chunks carry their identity (issue 25, item 1).

A finished chunk of a resumable job is reused only if it is a regular file (never through a
link, never blocking on a FIFO) holding this job's key, its chunk number, index range, row
count and a checksum that matches its columns (and its companion adversarial file). Any
other chunk is recomputed with a one-line notice, and the final records are byte-identical
to an uninterrupted run's. The unit tests below probe the store with every hostile kind of
file; the end-to-end tests replay the issue's reproduction (chunk 0 copied over chunk 1).
"""
from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from abstain.chunks import ChunkError, ChunkStore
from abstain.outputs import WORK

from reliability_helpers import interrupted_after, one_thread, run_main, train_tiny_run  # noqa: F401


def _index(k: int) -> np.ndarray:
    return np.arange(5 * k, 5 * k + 5)


def _cols(k: int) -> dict[str, np.ndarray]:
    idx = _index(k)
    return {"index": idx, "label": idx % 3, "pred": (idx + k) % 3,
            "robust@0.1": idx % 2 == 0, "note": np.array([f"s{i}" for i in idx], dtype=object)}


def _store(d: Path, key: str = "k" * 16) -> ChunkStore:
    return ChunkStore(d, key, _index)


def _filled(d: Path, n: int = 3) -> ChunkStore:
    s = _store(d)
    for k in range(n):
        s.save(k, _cols(k))
    return s


def test_a_saved_chunk_loads_back_exactly(tmp_path):
    s = _filled(tmp_path)
    assert s.finished(3) == {0, 1, 2}
    got = s.load(1)
    assert list(got) == list(_cols(1))
    for name, v in _cols(1).items():
        assert np.array_equal(got[name], v) and got[name].dtype == v.dtype


def _tamper_column(p: Path) -> None:
    """Rewrite a chunk with one value changed but its identity (and checksum) kept."""
    with np.load(p, allow_pickle=False) as z:
        arrays = {name: z[name].copy() for name in z.files}
    arrays["pred"][0] = (arrays["pred"][0] + 1) % 3
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    p.write_bytes(buf.getvalue())


def _no_identity(p: Path) -> None:
    """A chunk in the format before issue 25: columns but no identity."""
    with np.load(p, allow_pickle=False) as z:
        arrays = {name: z[name].copy() for name in z.files if name != "__chunk__"}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    p.write_bytes(buf.getvalue())


HOSTILE = {
    "copy-of-chunk-0": (lambda s, p: shutil.copyfile(s.path(0), p), "holds chunk 0"),
    "truncated": (lambda s, p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "unreadable"),
    "empty": (lambda s, p: p.write_bytes(b""), "unreadable"),
    "random-bytes": (lambda s, p: p.write_bytes(np.random.default_rng(0).bytes(4096)), "unreadable"),
    "pickle": (lambda s, p: p.write_bytes(b"\x80\x02cos\nsystem\n."), "unreadable"),
    "tampered-value": (lambda s, p: _tamper_column(p), "checksum"),
    "no-identity": (lambda s, p: _no_identity(p), "unreadable"),
    "symlink-to-system-file": (lambda s, p: (p.unlink(), p.symlink_to("/etc/passwd")), "not a regular file"),
    "symlink-to-valid-chunk": (lambda s, p: (p.unlink(), p.symlink_to(s.path(1).with_name("keep.npz"))),
                               "not a regular file"),
    "fifo": (lambda s, p: (p.unlink(), os.mkfifo(p)), "not a regular file"),
    "directory": (lambda s, p: (p.unlink(), p.mkdir(), (p / "x").write_text("x")), "not a regular file"),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_a_hostile_chunk_is_recomputed_with_a_notice(tmp_path, kind, capsys):
    s = _filled(tmp_path / "job")
    shutil.copyfile(s.path(1), s.path(1).with_name("keep.npz"))      # a valid chunk 1, kept aside
    make, reason = HOSTILE[kind]
    make(s, s.path(1))
    capsys.readouterr()
    assert s.finished(3) == {0, 2}
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("notice: recomputing chunk 1") and reason in err[0], err
    assert not os.path.lexists(s.path(1))          # cleared, so the recomputed chunk can be written
    assert Path("/etc/passwd").is_file()           # a link's target is never touched
    s.save(1, _cols(1))
    assert s.finished(3) == {0, 1, 2}
    with pytest.raises(ChunkError):
        _store(tmp_path / "job", key="x" * 16).load(0)


def test_a_chunk_of_another_job_is_not_accepted(tmp_path, capsys):
    other = _store(tmp_path / "other", key="b" * 16)
    other.save(1, _cols(1))
    s = _filled(tmp_path / "job")
    shutil.copyfile(other.path(1), s.path(1))       # same rows, same index range, another key
    assert s.finished(3) == {0, 2}
    assert "key does not match" in capsys.readouterr().err


def test_a_row_count_or_companion_that_does_not_match_is_refused(tmp_path):
    s = _store(tmp_path)
    with pytest.raises(RuntimeError):               # a chunk never holds other samples than its range
        s.save(0, _cols(1))
    s.path(0, "safetensors").parent.mkdir(parents=True, exist_ok=True)
    s.path(0, "safetensors").write_bytes(b"adversarial inputs")
    s.save(0, _cols(0), companions=("safetensors",))
    assert s.companion(0, "safetensors") == b"adversarial inputs"
    s.path(0, "safetensors").write_bytes(b"other inputs")
    assert not s.done(0)
    with pytest.raises(ChunkError, match="safetensors"):
        s.companion(0, "safetensors")


# ---- end to end: the reproduction ----------------------------------------------

EVAL = ["--eps", "0.1", "--steps", "2", "--samples", "40", "--chunk", "5", "--device", "cpu"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("chunks"))




def test_evaluate_recomputes_a_copied_and_a_linked_chunk_and_gives_the_uninterrupted_records(
        trained, tmp_path, capsys, monkeypatch):
    import abstain.evaluation

    ref = Path(shutil.copytree(trained / "run", tmp_path / "ref"))
    adv_ref = tmp_path / "ref-adv.safetensors"
    assert run_main(["evaluate", "--run", ref, *EVAL, "--save-adversarial", adv_ref], capsys)[0] == 0
    run = Path(shutil.copytree(trained / "run", tmp_path / "run"))
    adv = tmp_path / "adv.safetensors"
    with monkeypatch.context() as m:
        interrupted_after(m, abstain.evaluation, "evaluate", 4)
        assert run_main(["evaluate", "--run", run, *EVAL, "--save-adversarial", adv], capsys)[0] == 130
    (job,) = (run / WORK).iterdir()
    shutil.copyfile(job / "chunk-000000.npz", job / "chunk-000001.npz")        # the step 2
    (job / "chunk-000002.npz").unlink()
    (job / "chunk-000002.npz").symlink_to("/etc/passwd")
    (job / "chunk-000003.safetensors").write_bytes((job / "chunk-000000.safetensors").read_bytes())
    with monkeypatch.context() as m:
        log = interrupted_after(m, abstain.evaluation, "evaluate", 10**6)
        rc, _, err = run_main(["evaluate", "--run", run, *EVAL, "--save-adversarial", adv], capsys)
    assert rc == 0, err
    notices = [ln for ln in err.splitlines() if ln.startswith("notice: recomputing chunk")]
    assert [ln.split()[3] for ln in notices] == ["1", "2", "3"], err
    assert len(log) == 8 - 1                        # chunks 1, 2, 3 and the four never written
    assert (run / "records" / "evaluate.csv").read_bytes() == (ref / "records" / "evaluate.csv").read_bytes()
    assert adv.read_bytes() == adv_ref.read_bytes()
    assert not (run / WORK).exists()


def test_certify_recomputes_a_truncated_chunk(trained, tmp_path, capsys, monkeypatch):
    import abstain.smoothing.records

    cert = ["--sigma", "0.25", "--eps", "0.1", "--n0", "16", "--n", "64", "--samples", "20", "--chunk", "4",
            "--device", "cpu"]
    ref = Path(shutil.copytree(trained / "run", tmp_path / "ref"))
    assert run_main(["certify", "--run", ref, *cert], capsys)[0] == 0
    run = Path(shutil.copytree(trained / "run", tmp_path / "run"))
    with monkeypatch.context() as m:
        interrupted_after(m, abstain.smoothing.records, "certify_chunk", 3)
        assert run_main(["certify", "--run", run, *cert], capsys)[0] == 130
    (job,) = (run / WORK).iterdir()
    p = job / "chunk-000000.npz"
    p.write_bytes(p.read_bytes()[:100])
    rc, _, err = run_main(["certify", "--run", run, *cert], capsys)
    assert rc == 0 and "notice: recomputing chunk 0" in err, err
    a, b = ((d / "records" / "certify.csv").read_text().splitlines() for d in (ref, run))
    col = a[0].split(",").index("seconds")             # but for the wall-clock seconds
    a, b = ([",".join(f for i, f in enumerate(r.split(",")) if i != col) for r in rows] for rows in (a, b))
    assert a == b
