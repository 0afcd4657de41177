"""The report: every table number equals the value recomputed from the records; images embed.

Runs the fake stages of ``pipeline_fakes`` (see test_pipeline.py), then parses the Markdown and
HTML tables back and recomputes each number from the per-sample CSV files with plain numpy.
"""
from __future__ import annotations

import base64
import csv
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import abstain.stages as stages_pkg
import pipeline_fakes
from abstain.cli import main as cli_main
from abstain.report import build_report
from abstain.report.render import fmt_cell, markdown_to_html, merge_paper

KEYS = ["nat_acc", "rob_acc", "rob_inacc", "nonrob_acc", "nonrob_inacc"]


@pytest.fixture
def run_dir(monkeypatch, tmp_path) -> Path:
    return pipeline_fakes.fake_run(monkeypatch, tmp_path)


def oracle(path: Path) -> dict[str, float]:
    """The four-way partition of one records file, computed here from the raw CSV."""
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    y = np.array([int(r["label"]) for r in rows])
    p = np.array([int(r["pred"]) for r in rows])
    rob = np.array([r["robust@0.1"] == "1" for r in rows])
    acc = p == y
    return {"nat_acc": acc.mean(), "rob_acc": (rob & acc).mean(), "rob_inacc": (rob & ~acc).mean(),
            "nonrob_acc": (~rob & acc).mean(), "nonrob_inacc": (~rob & ~acc).mean()}


def md_tables(md: str) -> dict[str, list[tuple[str, list[str], list[list[str]]]]]:
    """Section title -> [(caption, header, rows)] parsed from the Markdown."""
    out: dict[str, list] = {}
    section, caption = None, ""
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        ln = lines[i]
        if ln.startswith("## "):
            section = ln[3:].strip()
            out[section] = []
        elif ln.startswith("**") and ln.endswith("**"):
            caption = ln.strip("*")
        elif ln.startswith("| ") and i + 1 < len(lines) and re.match(r"\|\s*---", lines[i + 1]):
            header = [c.strip() for c in ln.strip("|").split("|")]
            i += 2
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            out[section].append((caption, header, rows))
            continue
        i += 1
    return out


def close(text: str, value: float) -> bool:
    return float(text) == pytest.approx(value, rel=5e-4, abs=5e-5) and text == fmt_cell(float(value))


def test_every_table_number_equals_the_value_recomputed_from_the_records(run_dir):
    md_path, html_path = build_report(run_dir)
    tables = md_tables(md_path.read_text())
    checked = 0
    for name in "abcd":
        secs = [t for title, t in tables.items() if title == f"fake stage {name}"]
        assert len(secs) == 1, tables.keys()
        (cap1, head1, rows1), (cap2, head2, rows2) = secs[0]
        per_seed = [oracle(f) for f in sorted((run_dir / name / "records").glob("eval-s*.csv"))]
        assert len(per_seed) == 2
        # mean table, with the paper's numbers in their own columns
        assert cap1 == "four-way partition"
        assert head1 == ["variant", "nat_acc", "nat_acc (paper)", "rob_acc", "rob_inacc",
                         "rob_inacc (paper)", "nonrob_acc", "nonrob_inacc"]
        (row,) = rows1
        cell = dict(zip(head1, row))
        for k in KEYS:
            assert close(cell[k], np.mean([m[k] for m in per_seed])), (name, k, cell[k])
            checked += 1
        assert cell["nat_acc (paper)"] == "0.9" and cell["rob_inacc (paper)"] == "0.016"
        # per-seed table
        assert head2 == ["seed", *KEYS]
        for r, m in zip(rows2, per_seed):
            for k, v in zip(KEYS, r[1:]):
                assert close(v, m[k])
                checked += 1
    assert checked == 4 * 15
    # the HTML shows the same numbers as the Markdown
    html_cells = [c for t in html_tables(html_path.read_text()) for r in t for c in r]
    md_cells = [c for secs in tables.values() for (_, h, rows) in secs for r in [h, *rows] for c in r]
    stage_md_cells = [c for title, secs in tables.items() if title.startswith("fake")
                      for (_, h, rows) in secs for r in [h, *rows] for c in r]
    assert stage_md_cells and all(c in html_cells for c in stage_md_cells)
    assert len(md_cells) > len(stage_md_cells)                       # environment tables too


class _Tables(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.imgs: list[str] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell = []
        elif tag == "img":
            self.imgs.append(dict(attrs)["src"])

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            self.tables[-1][-1].append("".join(self.cell).strip())
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def html_tables(text: str) -> list[list[list[str]]]:
    p = _Tables()
    p.feed(text)
    return p.tables


def test_html_is_self_contained_and_markdown_links_images_beside_it(run_dir):
    md_path, html_path = build_report(run_dir)
    page = html_path.read_text()
    p = _Tables()
    p.feed(page)
    assert len(p.imgs) == 4
    for src, name in zip(p.imgs, "abcd"):
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]) == (run_dir / name / "figure.png").read_bytes()
    assert not re.search(r'(src|href)="(?!data:|#)', page)           # nothing fetched from outside
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md_path.read_text())
    assert links == [f"{n}/figure.png" for n in "abcd"]
    assert all((md_path.parent / l).is_file() for l in links)
    md = md_path.read_text()
    env = md[md.index("## Environment"):]
    assert "python" in env and "torch" in env and "numpy" in env
    for n in "abcd":
        assert re.search(rf"\| {n} \| done \| \d+s \([\d.]+ s\) \| \d+s \([\d.]+ s\) \| cpu[^|]*\| 0, 1 \| 0.1 \| "
                         rf"linf \|", env)
        assert f"{n}/records/eval-s0.csv | 60 |" in env


def test_report_command_rebuilds_from_the_records_alone(run_dir, capsys):
    import shutil

    build_report(run_dir)
    first = md_tables((run_dir / "report.md").read_text())["fake stage c"]
    # no models needed, and results.json numbers are never used for the tables
    for w in run_dir.glob("*/work"):
        shutil.rmtree(w)
    res = json.loads((run_dir / "c" / "results.json").read_text())
    res["model"] = {k: 0.123 for k in KEYS}
    (run_dir / "c" / "results.json").write_text(json.dumps(res))
    assert cli_main(["report", str(run_dir)]) == 0
    assert md_tables((run_dir / "report.md").read_text())["fake stage c"] == first
    # edit a record: the table follows the records
    rec = run_dir / "c" / "records" / "eval-s1.csv"
    lines = rec.read_text().splitlines()
    head = lines[0].split(",")
    li, pi = head.index("label"), head.index("pred")
    fixed = [lines[0]] + [",".join(c if j != pi else parts[li] for j, c in enumerate(parts))
                          for parts in (l.split(",") for l in lines[1:])]
    rec.write_text("\n".join(fixed) + "\n")
    assert cli_main(["report", str(run_dir)]) == 0
    (_, head1, (row,)), _ = md_tables((run_dir / "report.md").read_text())["fake stage c"]
    want = np.mean([oracle(f)["nat_acc"] for f in sorted((run_dir / "c" / "records").glob("*.csv"))])
    assert oracle(rec)["nat_acc"] == 1.0
    assert close(dict(zip(head1, row))["nat_acc"], want)
    assert dict(zip(head1, row))["nat_acc"] != dict(zip(first[0][1], first[0][2][0]))["nat_acc"]


def test_report_errors_and_broken_stage_reports(run_dir, tmp_path, capsys, monkeypatch):
    assert cli_main(["report", str(tmp_path / "nope")]) == 2
    assert "no such run directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli_main(["report", str(tmp_path / "empty")]) == 2
    assert "holds no stage results" in capsys.readouterr().err

    def broken(stage_dir):
        raise ValueError("records are odd")
    import dataclasses
    i = next(i for i, st in enumerate(stages_pkg.STAGES) if st.name == "c")
    stages_pkg.STAGES[i] = dataclasses.replace(stages_pkg.STAGES[i], report=broken)
    md, _ = build_report(run_dir)
    text = md.read_text()
    assert "the stage's report failed: ValueError: records are odd" in text
    assert "fake stage d" in text and text.count("four-way partition") == 3


def test_render_helpers():
    cols, rows, is_paper = merge_paper({"columns": ["m", "acc", "inacc"], "rows": [["std", 0.5, 0.25]],
                                        "paper": [["std", None, 0.016]]})
    assert cols == ["m", "acc", "inacc", "inacc (paper)"] and rows == [["std", "0.5", "0.25", "0.016"]]
    assert is_paper == [False, False, False, True]
    with pytest.raises(ValueError, match="another shape"):
        merge_paper({"columns": ["a"], "rows": [[1]], "paper": [[1], [2]]})
    h = markdown_to_html("**bold** and `x<y` <script>alert(1)</script>\n\n- one\n- *two*")
    assert "<strong>bold</strong>" in h and "<code>x&lt;y</code>" in h and "<script>" not in h
    assert re.sub(r"\s", "", h).endswith("<ul><li>one</li><li><em>two</em></li></ul>")
    assert fmt_cell(0.123456) == "0.1235" and fmt_cell(None) == "–" and fmt_cell(3) == "3"
    assert fmt_cell(float("nan")) == "nan" and fmt_cell(np.float32(0.5)) == "0.5"


# ----------------------------------------------------------------- a report cannot be turned against its reader

BAD_LINKS = ["javascript:alert(1)", "JaVaScRiPt:alert(1)", "java&#115;cript:alert(1)", "java%73cript:alert(1)",
             "  javascript:alert(1)", "<javascript:alert(1)>", "vbscript:msgbox(1)", "data:text/html,<b>x</b>",
             "file:///etc/passwd", "//evil.example/x", "jav\tascript:alert(1)"]


def _urls(page: str) -> list[str]:
    import html

    return [html.unescape(u) for u in re.findall(r'(?:href|src)\s*=\s*"([^"]*)"', page)]


def _allowed(url: str) -> bool:
    u = "".join(ch for ch in url if ch > " ").lower()
    return u.startswith(("http://", "https://", "#", "data:image/")) or (
        not re.match(r"^[a-z][a-z0-9+.-]*:", u) and not u.startswith("//"))


@pytest.mark.parametrize("url", BAD_LINKS)
def test_markdown_links_only_to_http_and_relative_paths(url):
    for text in (f"[x]({url})", f"![x]({url})", f"<{url}>", f'<a href="{url}">x</a>', f"[x]: {url}\n\n[x]"):
        page = markdown_to_html(text)
        assert all(_allowed(u) for u in _urls(page)), (text, page)
        assert "<a href" not in page or "javascript" not in page.lower(), page
        assert "<script" not in page


def test_allowed_links_stay_links():
    page = markdown_to_html("[a](https://example.org/p) [b](stage/fig.png) [c](#stage-x) [d](http://x.org)")
    assert _urls(page) == ["https://example.org/p", "stage/fig.png", "#stage-x", "http://x.org"]


def test_a_hostile_pipeline_reason_is_inert(run_dir):
    """A stage reason in pipeline.json (text from the run directory, which may come from
    anyone) with a javascript: link and raw HTML: shown as text, never as a live link."""
    manifest = json.loads((run_dir / "pipeline.json").read_text())
    (run_dir / "b" / ".done").unlink()
    manifest.setdefault("stages", {})["b"] = {
        "status": "failed", "reason": "[click](javascript:alert(document.cookie)) "
                                      "<img src=x onerror=alert(1)> <script>alert(2)</script>"}
    (run_dir / "pipeline.json").write_text(json.dumps(manifest))
    _, html_path = build_report(run_dir)
    page = html_path.read_text()
    assert "click" in page
    assert "javascript:" not in " ".join(_urls(page)).lower()
    assert "<img src=x" not in page and "<script>alert" not in page
    assert all(_allowed(u) for u in _urls(page))


def test_only_files_inside_the_run_directory_are_embedded(run_dir, tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes((run_dir / "a" / "figure.png").read_bytes() + b"SECRET-BYTES")
    (run_dir / "a" / "figure.png").unlink()
    (run_dir / "a" / "figure.png").symlink_to(secret)                  # a link leading outside
    (run_dir / "c" / "figure.png").unlink()
    (run_dir / "c" / "figure.png").symlink_to(run_dir / "d" / "figure.png")   # inside: fine
    md_path, html_path = build_report(run_dir)
    page = html_path.read_text()
    imgs = [base64.b64decode(u.split(",", 1)[1]) for u in _urls(page) if u.startswith("data:")]
    assert all(b"SECRET-BYTES" not in b for b in imgs) and len(imgs) == 3
    assert "outside the run directory" in page and "outside the run directory" in md_path.read_text()
    assert (run_dir / "d" / "figure.png").read_bytes() in imgs
