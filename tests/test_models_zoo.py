"""CIFAR ResNets / WideResNets: shapes, published parameter counts, published-checkpoint loading."""
import copy
import pickle

import pytest
import torch

from abstain import models
from abstain.errors import CheckpointError
from abstain.foreign import load_published
from abstain.models.published import guess_architecture


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


def _randomise_bn(model, seed=0):
    """Non-trivial BN statistics so a wrong layer order or a dropped buffer shows in the outputs."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.bias.shape, generator=g) * 0.4 - 0.2)
    return model.eval()


# Published sizes (10 classes): WRN-28-10 36.5M (Zagoruyko & Komodakis), ResNet-18 11.17M and
# ResNet-50 23.52M (kuangliu/RobustBench CIFAR ResNets), ResNet-110 1.73M (He et al.), WRN-40-10 55.8M.
@pytest.mark.parametrize("name,count", [
    ("resnet18", 11_173_962), ("resnet50", 23_520_842), ("resnet110", 1_730_714),
    ("wrn-28-10", 36_479_194), ("wrn-40-10", 55_841_754), ("wrn-34-10", 46_160_474),
    ("dm-wrn-28-10", 36_479_194),
])
def test_parameter_counts_match_published(name, count):
    with torch.device("meta"):  # shapes only: no memory, no init time
        model = models.create(name, 10)
    assert _n_params(model) == count


@pytest.mark.parametrize("name,k,size", [("resnet18", 10, 32), ("resnet110", 100, 32),
                                         ("resnet50", 7, 64)])  # wrn-28-10: the round-trip test
def test_output_shapes_and_eval_batch_independence(name, k, size):
    torch.manual_seed(0)
    model = models.create(name, k).eval()
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, k) and torch.isfinite(out).all()
        # eval mode: a sample's logits do not depend on its batch. Checked in float64, where the
        # two batch shapes (other kernels, other summation orders) differ by float64 rounding
        # only: the float32 rounding of this very computation (measured against float64),
        # scaled by eps64/eps32, with 1e3 to spare. A sample that saw its neighbour (BatchNorm
        # on batch statistics) would differ by the size of the logits, ~1e9 times more.
        model64, x64 = copy.deepcopy(model).double(), x.double()
        out64 = model64(x64)
        rounding32 = max(float((out - out64).abs().max()), torch.finfo(torch.float32).eps * float(out.abs().max()))
        tolerance = 1e3 * rounding32 * torch.finfo(torch.float64).eps / torch.finfo(torch.float32).eps
        assert float((model64(x64[:1]) - out64[:1]).abs().max()) <= tolerance


def _robustbench_file(tmp_path, state, name="rb.pt", sub_block1=True):
    """A file in RobustBench's layout: DataParallel ``module.`` prefix, ``{"state_dict": ...}``
    nesting and (Carmon2019Unlabeled: ``WideResNet(sub_block1=True)``) an unused ``sub_block1``."""
    sd = dict(state)
    if sub_block1:
        sd.update({"sub_block1." + k[len("block1."):]: torch.randn(v.shape) if v.is_floating_point() else v
                   for k, v in state.items() if k.startswith("block1.")})
    path = tmp_path / name
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 100}, path)
    return path


@pytest.fixture(scope="module")
def wrn():
    torch.manual_seed(1)
    return _randomise_bn(models.create("wrn-28-10", 10))


def test_robustbench_wrn_28_10_roundtrip_identical_outputs(tmp_path, wrn):
    path = _robustbench_file(tmp_path, wrn.state_dict())
    loaded = load_published("wrn-28-10", path, 10)
    assert not loaded.training
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = loaded(x)
        assert out.shape == (2, 10) and torch.equal(out, wrn(x))
    # the key names are RobustBench's, so the same file loads into the registry model
    assert "block1.layer.0.bn1.running_mean" in wrn.state_dict() and "fc.weight" in wrn.state_dict()


def test_missing_key_is_named(tmp_path, wrn):
    state = dict(wrn.state_dict())
    del state["block2.layer.3.conv2.weight"]
    path = _robustbench_file(tmp_path, state, sub_block1=False)
    with pytest.raises(CheckpointError, match=r"missing keys: block2\.layer\.3\.conv2\.weight"):
        load_published("wrn-28-10", path, 10)


def test_other_architecture_fails_clearly_and_names_the_match(tmp_path):
    torch.manual_seed(0)
    r18 = models.create("resnet18", 10)
    path = tmp_path / "r18.pth"
    torch.save(r18.state_dict(), path)
    with pytest.raises(CheckpointError, match=r"holds a 'resnet18' checkpoint with 10 classes, not 'wrn-28-10' with 10.*does not fit.*unexpected keys: layer1"):
        load_published("wrn-28-10", path, 10)
    assert guess_architecture(r18.state_dict()) == "resnet18"


def test_wrong_class_count_is_reported(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "c100.pt"
    torch.save(models.create("resnet110", 100).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"'resnet110' checkpoint with 100 classes, not 'resnet110' with 10.*shape mismatch: fc\.bias \(100,\) vs \(10,\)"):
        load_published("resnet110", path, 10)


def test_cohen_layout_and_normalisation(tmp_path):
    """Cohen et al. save ``Sequential(NormalizeLayer, ResNet-110)``: keys ``1.*``; their
    NormalizeLayer statistics are our default for resnet110, applied as the model's first layer."""
    torch.manual_seed(2)
    ref = _randomise_bn(models.create("resnet110", 10, mean=(0, 0, 0), std=(1, 1, 1)), seed=2)
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"epoch": 90, "arch": "cifar_resnet110",
                "state_dict": {f"1.{k}": v for k, v in ref.state_dict().items()}}, path)
    loaded, kw = load_published("resnet110", path, 10, return_kwargs=True)
    mean = torch.tensor(kw["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(kw["std"]).view(1, 3, 1, 1)
    assert kw["std"] == pytest.approx([0.2023, 0.1994, 0.2010])
    # normalisation is the first layer, outside the state dict (so the publisher's keys fit)
    assert not any(k.startswith("normalize") for k in loaded.state_dict())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), ref((x - mean) / std), atol=1e-5)


def test_robustbench_mu_sigma_buffers_become_the_normalisation(tmp_path):
    """e.g. RobustBench's Engstrom2019Robustness (ResNet-50 with ``mu``/``sigma`` buffers)."""
    torch.manual_seed(3)
    ref = _randomise_bn(models.create("resnet110", 10, mean=(0, 0, 0), std=(1, 1, 1)), seed=3)
    mu = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    sigma = torch.tensor([0.2471, 0.2435, 0.2616]).view(1, 3, 1, 1)
    path = tmp_path / "eng.pt"
    torch.save({**ref.state_dict(), "mu": mu, "sigma": sigma}, path)
    loaded = load_published("resnet110", path, 10)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), ref((x - mu) / sigma), atol=1e-5)
    # without buffers a RobustBench ResNet-18 takes raw [0, 1] inputs
    path2 = tmp_path / "plain.pt"
    torch.save(models.create("resnet18", 10).state_dict(), path2)
    _, kw = load_published("resnet18", path2, 10, return_kwargs=True)
    assert kw == {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}


def test_deepmind_wrn_layout_with_its_normalisation_buffers(tmp_path, monkeypatch):
    """RobustBench's DMWideResNet (Gowal2020Uncovering_28_10_extra; Rebuffi2021Fixing_28_10_
    cutmix_ddpm for CIFAR-100): keys init_conv/layer.g.block.i/batchnorm/logits and persistent
    ``mean``/``std`` buffers of shape (3, 1, 1). A WRN-16-2 of that layout keeps the test fast;
    dm-wrn-28-10 is the same class (parameter count checked above)."""
    from abstain.models import published
    from abstain.models.wideresnet import DMWideResNet

    def small(k, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)):
        return DMWideResNet(16, 2, k, mean, std)

    monkeypatch.setitem(published.PUBLISHED, "dm-wrn-16-2", (small, published.PUBLISHED["dm-wrn-28-10"][1]))
    torch.manual_seed(4)
    ref = _randomise_bn(small(100, mean=(0, 0, 0), std=(1, 1, 1)), seed=4)
    assert set(ref.state_dict()) <= set(models.create("dm-wrn-28-10", 100).state_dict())
    assert "layer.1.block.0.shortcut.weight" in ref.state_dict() and "logits.weight" in ref.state_dict()
    mean = torch.tensor([0.5071, 0.4865, 0.4409]).view(3, 1, 1)
    std = torch.tensor([0.2673, 0.2564, 0.2762]).view(3, 1, 1)
    path = tmp_path / "Rebuffi2021Fixing_28_10_cutmix_ddpm.pt"
    torch.save({"model_state_dict": {**ref.state_dict(), "mean": mean, "std": std}}, path)
    loaded, kw = load_published("dm-wrn-16-2", path, 100, return_kwargs=True)
    assert kw["mean"] == pytest.approx([0.5071, 0.4865, 0.4409])
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), ref((x - mean) / std), atol=1e-5)
    with pytest.raises(CheckpointError, match="holds a 'dm-wrn-16-2' checkpoint"):
        load_published("wrn-28-10", path, 100)


def test_html_page_saved_as_checkpoint(tmp_path):
    path = tmp_path / "Carmon2019Unlabeled.pt"
    path.write_text("<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title>")
    with pytest.raises(CheckpointError, match="HTML page"):
        load_published("wrn-28-10", path, 10)


class _Marker:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_malicious_checkpoint_never_runs_code(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        pickle.dump({"state_dict": {"fc.weight": _Marker(str(marker))}}, fh)
    with pytest.raises(CheckpointError):
        load_published("resnet110", path, 10)
    assert not marker.exists()


def test_unknown_published_arch(tmp_path):
    with pytest.raises(CheckpointError, match="no published-checkpoint layout for 'vit'"):
        load_published("vit", tmp_path / "x.pt", 10)
