"""The README's quickstart is a runnable chain: its commands, in order, as written, with a
tiny-scale override (one training epoch, a few test samples, fewer noise samples) so the
chain takes seconds. Each must exit 0 and write what the README says it writes."""
from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

from reliability_helpers import run_main

ROOT = Path(__file__).resolve().parents[1]
TINY = {"train": ["--set", "train.epochs=1"], "evaluate": ["--samples", "30"],
        "abstain": ["--samples", "30"], "certify": ["--samples", "6", "--n", "2000"]}


def quickstart_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- quickstart:begin -->\s*```bash\n(.*?)```\s*<!-- quickstart:end -->", text, re.S)
    assert m, "README.md lacks the quickstart block"
    cmds = []
    for line in m.group(1).splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            words = shlex.split(line)
            assert words[0] == "abstain", line
            cmds.append(words[1:])
    return cmds


@pytest.mark.slow
def test_quickstart_runs_as_written(tmp_path, monkeypatch, capsys) -> None:
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    cmds = quickstart_commands()
    assert [c[0] for c in cmds].count("train") >= 3 and {"evaluate", "abstain", "certify"} <= {c[0] for c in cmds}
    for argv in cmds:
        rc, out, err = run_main(argv + ["--device", "cpu"] + TINY.get(argv[0], []), capsys)
        assert rc == 0, f"abstain {' '.join(argv)} failed: {err}"
        out_dir = Path(argv[argv.index("--out") + 1]) if "--out" in argv else Path(argv[argv.index("--run") + 1])
        if argv[0] == "train":
            assert (out_dir / "model.safetensors").is_file() and (out_dir / "meta.json").is_file()
        else:
            sections = json.loads((out_dir / "results.json").read_text())
            assert any(k == argv[0] or k.startswith(argv[0] + "-") for k in sections), argv
            assert any((out_dir / "records").glob("*.csv")), argv
