"""The authors' records (ymerkli/robust-abstain format): reader, malformed files, and the stage
``paper-records`` end to end on a tiny checkout the tests generate (never the real repository)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from abstain import cli
from abstain.authors_records import infer_labels, read_authors_csv
from abstain.errors import DataError

N = 500
Y = np.arange(N) % 10                      # the hidden labels of the generated test set


def write_apgd(path: Path, model: str, pred, rob: dict[int, np.ndarray], y=Y, extra: dict | None = None) -> Path:
    """A file as the authors' pandas code writes it: unnamed index, sample_idx, model columns."""
    pred = np.asarray(pred)
    cols = {"sample_idx": np.arange(len(pred)), f"{model}_is_acc": (pred == y).astype(int)}
    cols.update({f"{model}_is_rob{k}_255": v.astype(int) for k, v in rob.items()})
    cols.update(extra or {})
    cols[f"{model}_pred"] = pred
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["," + ",".join(cols)]
    lines += [f"{i}," + ",".join(str(c[i]) for c in cols.values()) for i in range(len(pred))]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_smoothing(path: Path, idx, label, pred, r2) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",sample_idx,label,base_prediction,prediction,linf_radius,l2_radius"]
    lines += [f"{j},{i},{y},{p if p >= 0 else 0},{p},{r / 20:.6f},{r:.6f}"
              for j, (i, y, p, r) in enumerate(zip(idx, label, pred, r2))]
    path.write_text("\n".join(lines) + "\n")
    return path


def wrong(y):
    return (y + 1) % 10


# ----------------------------------------------------------------------------- reader
def test_reader_parses_models_radii_attack_and_dataset_from_the_names(tmp_path):
    model = "Carmon2019Unlabeled_autoaugment_mra1_255"          # digits and _255 inside the name
    pred = np.where(np.arange(N) < 40, wrong(Y), Y)
    rob1, rob2 = np.arange(N) < 300, np.arange(N) < 100
    f = write_apgd(tmp_path / "x" / "testset_mtsd_l_Linf_apgd.csv", model, pred, {1: rob1, 2: rob2})
    r = read_authors_csv(f)
    assert (r.dataset, r.attack, r.norm, r.split, r.run) == ("mtsd_l", "apgd", "Linf", "testset", "x")
    assert list(r.models) == [model]
    m = r.model
    assert m.eps == pytest.approx([1 / 255, 2 / 255])
    np.testing.assert_array_equal(m.robust_at(2 / 255), rob2)
    assert m.robust_at(4 / 255) is None
    np.testing.assert_array_equal(m.pred, pred)
    assert int(m.is_acc.sum()) == N - 40
    from abstain.records import read_authors_csv as reexported
    assert reexported is read_authors_csv


def test_reader_apgdconf_and_multi_model_files(tmp_path):
    pred = Y.copy()
    conf = {"M_adv_conf1_255": np.linspace(0.2, 0.9, N).round(4), "M_nat_conf": np.full(N, 0.5)}
    f = write_apgd(tmp_path / "testset_cifar10_Linf_apgdconf.csv", "M", pred, {1: np.ones(N, bool)}, extra=conf)
    r = read_authors_csv(f)
    assert r.attack == "apgdconf"
    assert r.model.adv_conf[1 / 255][-1] == pytest.approx(0.9)
    assert r.model.extra["nat_conf"][0] == 0.5
    # an ACE file: model name ending in _2_255, cert flags and a selection network
    ace = "C3_ACE_Net_IBP_cert_cifar10_2_255"
    extra = {f"{ace}_is_cert1_255": np.ones(N, int), f"{ace}_is_select": (np.arange(N) % 2),
             "Other_is_acc": np.ones(N, int), "Other_pred": Y}
    f2 = write_apgd(tmp_path / "testset_cifar10_Linf_pgd.csv", ace, pred, {1: np.ones(N, bool)}, extra=extra)
    r2 = read_authors_csv(f2)
    assert set(r2.models) == {ace, "Other"}
    assert r2.models[ace].certified[1 / 255].all() and r2.models[ace].extra["is_select"].sum() == N // 2
    with pytest.raises(DataError, match="holds 2 models"):
        r2.model


def test_reader_smoothing_files(tmp_path):
    idx = np.arange(0, 100, 2)
    pred = np.where(np.arange(50) < 5, -1, Y[idx])
    f = write_smoothing(tmp_path / "augm" / "cifar10" / "run_a" / "smoothing" /
                        "testset_smooth0.12_N0100_N100000.csv", idx, Y[idx], pred, np.linspace(0, 0.5, 50))
    r = read_authors_csv(f)
    assert (r.attack, r.sigma, r.dataset, r.run, r.norm) == ("smoothing", 0.12, "cifar10", "run_a", None)
    cert = r.certified_at(0.25)
    assert not cert[:5].any()                              # abstentions are never certified
    assert int(cert.sum()) == int(np.sum(np.linspace(0, 0.5, 50)[5:] >= 0.25))
    assert int(r.model.is_acc.sum()) == 45


def _good(tmp_path: Path) -> str:
    f = write_apgd(tmp_path / "g.csv", "M", Y, {1: np.ones(N, bool)})
    return f.read_text()


@pytest.mark.parametrize("case, expect", [
    ("no_sample_idx", "no sample_idx column"),
    ("no_pred", "missing column M_pred"),
    ("bad_flag", "expected 0 or 1"),
    ("fractional_pred", "non-integer"),
    ("text_pred", "expected integers"),
    ("negative_idx", "expected values >= 0"),
    ("truncated_row", "truncated or corrupt"),
    ("no_final_newline", "truncated"),
    ("not_utf8", "not UTF-8"),
    ("duplicate_idx", "duplicate sample_idx 3"),
    ("duplicate_column", "duplicate columns M_is_acc"),
    ("empty", "empty"),
    ("header_only", "no rows"),
    ("no_model_columns", "no <model>_is_acc"),
    ("nan_conf", "NaN"),
])
def test_malformed_files_raise_one_clear_error_naming_the_file(tmp_path, case, expect):
    text = _good(tmp_path)
    lines = text.splitlines()
    f = tmp_path / "bad" / "testset_cifar10_Linf_apgd.csv"
    f.parent.mkdir()
    if case == "no_sample_idx":
        text = text.replace(",sample_idx,", ",idx,", 1)
    elif case == "no_pred":
        text = "\n".join(",".join(x.split(",")[:-1]) for x in lines) + "\n"
    elif case == "bad_flag":
        lines[5] = lines[5].replace(",1,1,", ",2,1,", 1)
        text = "\n".join(lines) + "\n"
    elif case in ("fractional_pred", "text_pred", "negative_idx"):
        parts = lines[7].split(",")
        if case == "negative_idx":
            parts[1] = "-6"
        else:
            parts[-1] = "3.5" if case == "fractional_pred" else "cat"
        lines[7] = ",".join(parts)
        text = "\n".join(lines) + "\n"
    elif case == "truncated_row":
        text = "\n".join(lines[:-1]) + "\n" + lines[-1][:4] + "\n"
    elif case == "no_final_newline":
        text = text[:-3]
    elif case == "duplicate_idx":
        lines[5] = lines[5].replace("4,4,", "4,3,", 1)
        text = "\n".join(lines) + "\n"
    elif case == "duplicate_column":
        text = text.replace("M_is_rob1_255", "M_is_acc", 1)
    elif case == "empty":
        text = ""
    elif case == "header_only":
        text = lines[0] + "\n"
    elif case == "no_model_columns":
        text = "\n".join(",".join(x.split(",")[:2]) for x in lines) + "\n"
    elif case == "nan_conf":
        f2 = write_apgd(tmp_path / "c.csv", "M", Y, {1: np.ones(N, bool)},
                        extra={"M_nat_conf": np.where(np.arange(N) == 9, np.nan, 0.5)})
        text = f2.read_text()
    if case == "not_utf8":
        f.write_bytes(text.encode() + b"\xff\xfe,\x80\n")
    else:
        f.write_text(text)
    with pytest.raises(DataError, match=expect) as e:
        read_authors_csv(f)
    assert str(f) in str(e.value) and "\n" not in str(e.value)


def test_missing_file_and_foreign_names(tmp_path):
    with pytest.raises(DataError, match="missing authors' records file"):
        read_authors_csv(tmp_path / "testset_cifar10_Linf_apgd.csv")
    f = tmp_path / "results.csv"
    f.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="not an authors' records file name"):
        read_authors_csv(f)


def test_labels_are_recovered_and_contradictions_refused(tmp_path):
    pa = np.where(np.arange(N) < 50, wrong(Y), Y)                # model A wrong on 0..49
    pb = np.where((np.arange(N) >= 25) & (np.arange(N) < 75), (Y + 2) % 10, Y)   # B wrong on 25..74
    ra = read_authors_csv(write_apgd(tmp_path / "a" / "testset_cifar10_Linf_apgd.csv", "A", pa, {}))
    rb = read_authors_csv(write_apgd(tmp_path / "b" / "testset_cifar10_Linf_apgd.csv", "B", pb, {}))
    idx, label, known = infer_labels([ra, rb])
    np.testing.assert_array_equal(idx, np.arange(N))
    assert int((~known).sum()) == 25                              # 25..49: both wrong
    np.testing.assert_array_equal(label[known], Y[known])
    assert (label[~known] != pa[~known]).all() and (label[~known] != pb[~known]).all()
    # B claims a correct prediction that differs from A's correct one: not the same samples
    pc = np.where(np.arange(N) == 100, wrong(Y), Y)
    rc = read_authors_csv(write_apgd(tmp_path / "c" / "testset_cifar10_Linf_apgd.csv", "C", pc, {},
                                     y=np.where(np.arange(N) == 100, wrong(Y), Y)))
    with pytest.raises(DataError, match="do not describe the same test samples"):
        infer_labels([ra, rc])


# ----------------------------------------------------------------------------- the stage
def make_checkout(root: Path) -> dict[str, str]:
    """A tiny ``robust-abstain`` checkout: a CIFAR-10 core model, a TRADES fine-tune, a
    published 8/255 model, an ERA run with flags at 1 and 2/255, and a smoothing file."""
    m = root / "robust-abstain" / "robustabstain" / "models"
    i = np.arange(N)
    # core (Table 7): wrong on 490..499, robust at 1/255 on 0..129, at 2/255 on 0..14
    core_run = "wrn4010_cifar10_std__20210919_2248"
    write_apgd(m / "std" / "cifar10" / core_run / "testset_cifar10_Linf_apgd.csv", "wrn4010_cifar10_std",
               np.where(i >= 490, wrong(Y), Y), {1: i < 130, 2: i < 15, 4: i < 0})
    # Carmon TRADES fine-tune at 1/255 (Table 1: 3.6 %): robust and wrong on exactly 18 samples
    write_apgd(m / "adv" / "cifar10" / "Linf" / "Carmon2019Unlabeled_cifar10_trades1_255ft__20210525_1434" /
               "testset_cifar10_Linf_apgd.csv", "Carmon2019Unlabeled_cifar10_trades1_255",
               np.where((i >= 400) & (i < 418), wrong(Y), Y), {1: np.ones(N, bool)})
    # the published Carmon model at 8/255 (Table 1: 0.8 %): 2 % here, so it differs
    write_apgd(m / "adv" / "cifar10" / "Linf" / "Carmon2019Unlabeled" / "testset_cifar10_Linf_apgd.csv",
               "Carmon2019Unlabeled", np.where(i < 10, wrong(Y), Y), {8: np.ones(N, bool)})
    # ERA fine-tune at 2/255 of Carmon et al. (Table 6 at 1/255), flags at 1 and 2/255:
    # A 0..99 correct, robust at 1 and 2; D 100..109 wrong, not robust; B 110..129 correct,
    # robust at 1 only; E 130..489 correct, not robust; F 490..499 correct, robust at 1 only
    era_run = "mra2_255_autoaugment__Carmon2019Unlabeled__20210617_1224"
    era_pred = np.where((i >= 100) & (i < 110), wrong(Y), Y)
    rob1 = (i < 100) | ((i >= 110) & (i < 130)) | (i >= 490)
    era_dir = m / "mrevadv" / "cifar10" / "Linf" / "2_255" / "mra2_255_autoaugment__Carmon2019Unlabeled"
    write_apgd(era_dir / era_run / "testset_cifar10_Linf_apgd.csv", "Carmon2019Unlabeled_autoaugment_mra2_255",
               era_pred, {1: rob1, 2: i < 100})
    # smoothing (Tables 2, 3): the σ = 0.12 Cohen model at ℓ2 radius 0.25 on 50 samples:
    # 31 correct and certified (62.0 %, as printed), 1 wrong and certified (2.0 %; paper 1.0)
    idx = np.arange(0, 100, 2)
    lab = Y[idx]
    pred = np.where(np.arange(50) == 31, wrong(lab), lab)
    r2 = np.where(np.arange(50) < 32, 0.3, 0.1)
    write_smoothing(m / "augm" / "cifar10" / "resnet110_cifar10_gaussaugm0.12__20210426_1811" / "smoothing" /
                    "testset_smooth0.12_N0100_N100000.csv", idx, lab, pred, r2)
    return {"core": core_run, "era": era_run}


def test_missing_checkout_names_the_path_and_the_repository(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    rc = cli.main(["reproduce", "--scale", "paper", "--only", "paper-records",
                   "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2
    assert str(tmp_path / "data" / "robust-abstain") in err
    assert "git clone https://github.com/ymerkli/robust-abstain" in err
    assert "Traceback" not in err and not (tmp_path / "out" / "paper-records" / "results.json").exists()
    # a checkout without records (e.g. an empty directory) is named as such
    (tmp_path / "data" / "robust-abstain" / "robustabstain" / "models").mkdir(parents=True)
    rc = cli.main(["reproduce", "--scale", "paper", "--only", "paper-records",
                   "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "no testset_*.csv records under" in err and str(tmp_path / "data" / "robust-abstain") in err


def test_stage_end_to_end_on_a_generated_checkout(tmp_path, capsys):
    names = make_checkout(tmp_path / "data")
    out = tmp_path / "out"
    rc = cli.main(["reproduce", "--scale", "paper", "--only", "paper-records",
                   "--data-root", str(tmp_path / "data"), "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    sdir = out / "paper-records"
    res = json.loads((sdir / "results.json").read_text())
    # partition keys name dataset, model (run) and ε; fractions
    t1 = res["cifar10/Carmon2019Unlabeled_cifar10_trades1_255ft__20210525_1434/1_255"]
    assert t1["rob_inacc"] == pytest.approx(18 / N) and t1["rob_acc"] == pytest.approx(1 - 18 / N)
    core = res[f"cifar10/{names['core']}/1_255"]
    assert (core["nat_acc"], core["rob_acc"]) == pytest.approx((490 / N, 130 / N))
    # the composition, counted by hand: authors' (selector = robust at 2ε, core assumed robust
    # where not selected) A + D + B = 130; sound (S at ε, robust selection at 2ε) A + B = 120
    c = res[f"compose/cifar10/{names['era']}+{names['core']}/1_255"]
    assert c["rob_acc_paper"] == pytest.approx(130 / N) and c["rob_acc"] == pytest.approx(120 / N)
    assert c["nat_acc_paper"] == pytest.approx(490 / N) and c["nat_acc"] == pytest.approx(1.0)
    assert c["coverage"] == pytest.approx(130 / N) and c["selector_paper_2eps"] == 1.0
    sm = res["cifar10/resnet110_cifar10_gaussaugm0.12__20210426_1811/smooth0.12/l2=0.25"]
    assert (sm["rob_acc"], sm["rob_inacc"], sm["rob_sel"]) == pytest.approx((31 / 50, 1 / 50, 32 / 50))
    # the records the report recomputes from: labels recovered, robust@ε columns
    from abstain.records import read_records
    rec = read_records(sdir / "records" / f"cifar10--mrevadv--{names['era']}.csv")
    assert {"index", "label", "label_known", "pred", f"robust@{1 / 255:g}", f"robust@{2 / 255:g}"} <= set(rec)
    np.testing.assert_array_equal(rec["label"][rec["label_known"] == 1], Y[rec["label_known"] == 1])
    # the report: our numbers beside the paper's, and a verdict per cell
    from abstain.stages.paper_records import report
    blocks = report(sdir)
    text = "\n".join(b["text"] for b in blocks if b["kind"] == "text")
    assert "Table 1: 1 reproduced, 1 differ, 16 no record" in text
    assert ("Table 1 cifar10 Carmon et al. 8/255 (the record (the published model's evaluation) gives 2.00)"
            in text)
    assert "Tables 2, 3: 0 reproduced, 1 differ, 7 no record" in text   # R_rob^¬acc 2.0 vs 1.0
    t1_block = next(b for b in blocks if b["kind"] == "table" and b["caption"].startswith("Table 1"))
    row = next(j for j, r in enumerate(t1_block["rows"]) if r[1] == "Carmon et al." and r[2] == "1/255")
    assert t1_block["rows"][row][-1] == pytest.approx(3.6) and t1_block["paper"][row][-1] == pytest.approx(3.6)
    t6 = next(b for b in blocks if b["kind"] == "table" and b["caption"].startswith("Tables 6"))
    r6 = next(r for r in t6["rows"] if r[0] == "cifar10" and r[1] == "Carmon et al." and r[2] == "1/255")
    assert r6[3] == names["era"] and r6[5:9] == pytest.approx([26.0, 98.0, 24.0, 100.0])
    report_md = (out / "report.md").read_text()
    assert "Table 1: robust inaccuracy" in report_md and "R_rob^¬acc % (paper)" in report_md
    # the report needs only the records: without results.json it gives the same tables
    (sdir / "results.json").rename(sdir / "results.moved")
    assert report(sdir) == blocks
    (sdir / "results.moved").rename(sdir / "results.json")
    # a rerun is cached
    assert cli.main(["reproduce", "--scale", "paper", "--only", "paper-records",
                     "--data-root", str(tmp_path / "data"), "--out", str(out)]) == 0
