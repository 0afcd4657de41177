"""Tiny fake stages for the pipeline and report tests (no torch training, fast).

Stages a, b (needs a), c (independent), d (needs b). Each "trains" ``EPOCHS`` epochs by
writing one checkpoint file per epoch under ``ctx.work`` (skipping epochs already there, like
``abstain.train.fit`` resumes), then writes per-sample records with known columns derived
from its config and its dependency's records, a small PNG, and returns results.

Environment knobs (read at call time): ``FAKE_LOG`` (file that gets "run X" and
"epoch X k" lines), ``FAKE_SLEEP`` (seconds per epoch), ``FAKE_PARAMS`` (JSON name -> param,
changes a stage's config), ``FAKE_STOP`` ("b:2": KeyboardInterrupt before epoch 2 of b),
``FAKE_FAIL`` (stage name that raises RuntimeError).
"""
from __future__ import annotations

import json
import os
import struct
import sys
import time
import zlib
from pathlib import Path

import numpy as np

from abstain.io import atomic_write_bytes, atomic_write_text
from abstain.metrics import partition
from abstain.records import read_records

EPOCHS = 4
N = 60
PAPER = {"nat_acc": 0.9, "rob_inacc": 0.016}


def _log(line: str) -> None:
    path = os.environ.get("FAKE_LOG")
    if path:
        with open(path, "a") as fh:
            fh.write(line + "\n")


def png_bytes(w: int, h: int, rgb: tuple[int, int, int]) -> bytes:
    """A valid solid-colour PNG, written by hand (no matplotlib import in the fakes)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    raw = b"".join(b"\x00" + bytes(rgb) * w for _ in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def seed_metrics(rec: dict) -> dict:
    return partition(rec["label"], rec["pred"], rec["robust@0.1"].astype(bool))


class FakeStage:
    def __init__(self, name: str, depends: tuple[str, ...] = ()):
        self.NAME = name
        self.DEPENDS = depends
        self.TITLE = f"fake stage {name}"

    def config(self, scale: str, demo: bool) -> dict:
        params = json.loads(os.environ.get("FAKE_PARAMS", "{}"))
        return {"seeds": [0] if demo else [0, 1], "eps": 0.1, "norm": "linf",
                "param": int(params.get(self.NAME, 1)), "epochs": EPOCHS}

    def run(self, ctx, config: dict) -> dict:
        _log(f"run {self.NAME}")
        sleep = float(os.environ.get("FAKE_SLEEP", "0"))
        stop = os.environ.get("FAKE_STOP", "")
        if os.environ.get("FAKE_FAIL") == self.NAME:
            raise RuntimeError(f"fake failure in {self.NAME}")
        offset = 0
        for d in self.DEPENDS:   # data flows from the dependency's records
            for f in sorted((ctx.stage_dir(d) / "records").glob("*.csv")):
                offset += int(read_records(f)["pred"].sum())
        state = config["param"] + offset
        bar = ctx.progress(total=config["epochs"], desc=self.NAME)
        for k in range(config["epochs"]):
            ck = ctx.work / f"epoch{k}.txt"
            if ck.exists():
                state = int(ck.read_text())
                bar.update(1)
                continue
            if stop == f"{self.NAME}:{k}":
                raise KeyboardInterrupt
            _log(f"epoch {self.NAME} {k}")
            print(f"training {self.NAME} epoch {k}", file=sys.stderr, flush=True)
            time.sleep(sleep)
            state = (state * 31 + k) % 1000
            atomic_write_text(ck, str(state))
            bar.update(1)
        bar.close()
        per_seed = []
        for s in config["seeds"]:
            rng = np.random.default_rng(state * 10 + s)
            label = rng.integers(0, 3, N)
            pred = np.where(rng.random(N) < 0.8, label, (label + 1) % 3)
            robust = rng.random(N) < 0.6
            cols = {"index": np.arange(N), "label": label, "pred": pred, "robust@0.1": robust}
            ctx.write_records(f"eval-s{s}", cols)
            per_seed.append(seed_metrics(cols))
        atomic_write_bytes(ctx.out / "figure.png", png_bytes(40, 20, (200, 30 * len(self.NAME), 90)))
        mean = {k: float(np.mean([m[k] for m in per_seed])) for k in per_seed[0]}
        return {"model": mean, "meta": {"seeds": config["seeds"], "state": state}}

    def report(self, stage_dir: Path) -> list[dict]:
        recs = [read_records(f) for f in sorted((Path(stage_dir) / "records").glob("eval-s*.csv"))]
        ms = [seed_metrics(r) for r in recs]
        keys = ["nat_acc", "rob_acc", "rob_inacc", "nonrob_acc", "nonrob_inacc"]
        row = ["model"] + [float(np.mean([m[k] for m in ms])) for k in keys]
        paper = ["model"] + [PAPER.get(k) for k in keys]
        per_seed = [[f"seed {i}"] + [m[k] for k in keys] for i, m in enumerate(ms)]
        return [
            {"kind": "heading", "text": "Partition"},
            {"kind": "text", "text": "Mean over **seeds** of the `eval-s*.csv` records."},
            {"kind": "table", "caption": "four-way partition", "columns": ["variant", *keys],
             "rows": [row], "paper": [paper]},
            {"kind": "table", "caption": "per seed", "columns": ["seed", *keys], "rows": per_seed,
             "paper": None},
            {"kind": "image", "path": "figure.png", "caption": f"figure of {self.NAME}"},
        ]


    def stage(self):
        """This fake as an :class:`abstain.stages.Stage`."""
        from abstain.stages import Stage

        return Stage(name=self.NAME, title=self.TITLE, depends=self.DEPENDS, config=self.config,
                     run=self.run, report=self.report, expected_seconds=(1.0, 2.0))


A = FakeStage("a")
B = FakeStage("b", ("a",))
C = FakeStage("c")
D = FakeStage("d", ("b",))
FAKES = (A, B, C, D)


def install(stages_pkg, fakes=FAKES) -> None:
    """Make ``fakes`` the mini stages (the paper-scale stages stay)."""
    keep = [s for s in stages_pkg.STAGES if s.scale != "mini"]
    stages_pkg.STAGES[:] = [f.stage() for f in fakes] + keep


if __name__ == "__main__":   # runner for the subprocess tests: python pipeline_fakes.py ARGS
    import abstain.stages

    from abstain.cli import main

    install(abstain.stages)
    sys.exit(main(sys.argv[1:]))


def fake_run(monkeypatch, tmp_path: Path) -> Path:
    """``abstain reproduce`` of the fake stages into ``tmp_path/run`` (two seeds per stage),
    with the stage table and the FAKE_* switches restored after the test; returns the run."""
    import abstain.stages as stages_pkg
    from abstain.pipeline import run_pipeline

    monkeypatch.setattr(stages_pkg, "STAGES", list(stages_pkg.STAGES))
    install(stages_pkg)
    for k in ("FAKE_SLEEP", "FAKE_PARAMS", "FAKE_STOP", "FAKE_FAIL", "FAKE_LOG"):
        monkeypatch.delenv(k, raising=False)
    out = tmp_path / "run"
    run_pipeline(out, demo=False, quiet=True, log=lambda m: None)
    return out
