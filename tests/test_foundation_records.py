import numpy as np
import pytest

from abstain import io, records
from abstain.errors import DataError, InputError


def test_records_roundtrip_exact(tmp_path):
    cols = {"index": np.arange(5), "label": np.array([0, 1, 2, 1, 0]),
            "radius": np.array([0.1, 1 / 3, 0.0, -1.0, 2e-9]), "robust@0.1": np.array([1, 0, 1, 1, 0], bool)}
    p = records.write_records(tmp_path / "r.csv", cols)
    back = records.read_records(p)
    assert list(back) == list(cols)
    assert np.array_equal(back["radius"], cols["radius"])  # repr keeps full precision
    assert back["robust@0.1"].tolist() == [1, 0, 1, 1, 0]


def test_records_errors(tmp_path):
    with pytest.raises(InputError, match="length"):
        records.write_records(tmp_path / "r.csv", {"a": [1, 2], "b": [1]})
    (tmp_path / "t.csv").write_text("a,b\n1,2\n3\n")
    with pytest.raises(DataError, match="truncated"):
        records.read_records(tmp_path / "t.csv")
    with pytest.raises(DataError, match="missing"):
        records.read_records(tmp_path / "none.csv")


def test_update_json_sections(tmp_path):
    p = tmp_path / "results.json"
    io.update_json(p, "train", {"nat_acc": 0.9})
    io.update_json(p, "evaluate", {"nat_acc": 0.8})
    assert io.read_json(p) == {"train": {"nat_acc": 0.9}, "evaluate": {"nat_acc": 0.8}}
