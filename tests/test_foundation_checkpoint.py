import json
import pickle

import pytest
import torch

from abstain import checkpoint, models
from abstain.errors import AbstainError, CheckpointError


def _meta(arch="cnn", k=10):
    return {"arch": arch, "num_classes": k, "dataset": "digits", "epoch": 1}


def test_roundtrip_identical_outputs(tmp_path):
    net = models.create("cnn", 10)
    checkpoint.save_checkpoint(tmp_path / "run", net, _meta(), {"epoch": 1, "rng": torch.get_rng_state()})
    assert {p.name for p in (tmp_path / "run").iterdir()} == {"model.safetensors", "meta.json", "train_state.pt"}
    loaded, meta = checkpoint.load_checkpoint(tmp_path / "run")
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(net.eval()(x), loaded(x))
    assert meta["arch"] == "cnn"
    state = checkpoint.load_train_state(tmp_path / "run")
    assert state["epoch"] == 1


def test_no_temp_files_left(tmp_path):
    checkpoint.save_checkpoint(tmp_path, models.create("mlp", 3), _meta("mlp", 3))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_other_architecture_is_refused_with_keys_named(tmp_path):
    checkpoint.save_checkpoint(tmp_path, models.create("mlp", 3), _meta("mlp", 3))
    meta = json.loads((tmp_path / "meta.json").read_text())
    meta["arch"] = "cnn"
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="missing keys|unexpected keys|shape"):
        checkpoint.load_checkpoint(tmp_path)


def test_truncated_weights(tmp_path):
    checkpoint.save_checkpoint(tmp_path, models.create("mlp", 3), _meta("mlp", 3))
    w = tmp_path / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        checkpoint.load_checkpoint(tmp_path)


def test_not_a_checkpoint_dir(tmp_path):
    with pytest.raises(CheckpointError, match="meta.json"):
        checkpoint.load_checkpoint(tmp_path)


class _Marker:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_foreign_pickle_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pt"
    with open(bad, "wb") as fh:
        pickle.dump({"state_dict": _Marker(str(marker))}, fh)
    with pytest.raises(CheckpointError, match="refusing to unpickle|corrupt"):
        checkpoint.load_foreign_state_dict(bad)
    assert not marker.exists()


def test_foreign_non_state_dict(tmp_path):
    p = tmp_path / "list.pt"
    torch.save([1, 2, 3], p)
    with pytest.raises(CheckpointError, match="state dict"):
        checkpoint.load_foreign_state_dict(p)


def test_html_saved_as_checkpoint(tmp_path):
    p = tmp_path / "model.pt"
    p.write_text("<!DOCTYPE html><html><head><title>Download</title></head></html>")
    with pytest.raises(CheckpointError, match="HTML"):
        checkpoint.load_foreign_state_dict(p)


def test_foreign_nesting_and_module_prefix(tmp_path):
    net = models.create("mlp", 3)
    p = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}, "epoch": 3}, p)
    sd = checkpoint.load_foreign_state_dict(p)
    fresh = models.create("mlp", 3)
    checkpoint.load_state_into(fresh, sd)
    x = torch.rand(4, 2)
    assert torch.equal(fresh(x), net(x))
    dropped = next(iter(sd))
    del sd[dropped]
    with pytest.raises(CheckpointError, match=f"missing keys: {dropped}"):
        checkpoint.load_state_into(models.create("mlp", 3), sd)


def test_unknown_model():
    with pytest.raises(AbstainError, match="unknown model 'vgg'"):
        models.create("vgg", 10)


def test_models_take_unit_inputs_and_normalise_inside():
    net = models.create("cnn", 10, mean=(0.5,), std=(0.25,))
    assert isinstance(net[0], models.Normalize)
    assert net(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    mlp = models.create("mlp", 3)
    assert mlp(torch.rand(5, 2)).shape == (5, 3)
    # the paper's synthetic model: four hidden layers of 64 units
    assert sum(isinstance(m, torch.nn.Linear) for m in mlp) == 5
