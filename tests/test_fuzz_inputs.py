"""Bad input, fuzzed (issue 11, part 4).

Hypothesis generates bad configs, tensors (NaN/Inf, outside [0, 1], wrong shapes, labels
out of range), bad record columns, and truncated/corrupted checkpoints and data files.
Each must be refused with an :class:`AbstainError` subclass whose message names the
problem; through the CLI: non-zero exit, one line, no traceback, nothing written.

Every generated input is counted in ``TRIED`` and the totals are printed by the last
test of the module (``pytest -s``) for the closing note.
"""
from __future__ import annotations

import collections
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from abstain import checkpoint, metrics, models, records
from abstain.data.base import TensorDataset
from abstain.errors import CheckpointError, DataError, InputError

TRIED: collections.Counter = collections.Counter()
FUZZ = settings(max_examples=int(__import__("os").environ.get("ABSTAIN_FUZZ_EXAMPLES", "40")), deadline=None,
                derandomize=__import__("os").environ.get("ABSTAIN_FUZZ_EXAMPLES") is None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
                # no shrinking: shrinking corrupted files is slow and the failing example is
                # printed as found
                phases=[Phase.explicit, Phase.reuse, Phase.generate])

BAD_FLOATS = st.sampled_from([float("nan"), float("inf"), -float("inf"), -1.0, -1e-9, 1e308])


# ---------------------------------------------------------------- record columns / metrics

@st.composite
def bad_partition_inputs(draw):
    n = draw(st.integers(1, 12))
    y = np.asarray(draw(st.lists(st.integers(0, 4), min_size=n, max_size=n)))
    pred = y.copy()
    rob = np.ones(n, dtype=bool)
    kind = draw(st.sampled_from(["length", "empty", "nan-pred", "frac-pred", "2d", "neg-label",
                                 "inf-label"]))
    if kind == "length":
        pred = np.concatenate([pred, pred[:1]])
        needle = "length"
    elif kind == "empty":
        y, pred, rob = y[:0], pred[:0], rob[:0]
        needle = "no samples"
    elif kind == "nan-pred":
        pred = pred.astype(float)
        pred[draw(st.integers(0, n - 1))] = float("nan")
        needle = "nan"
    elif kind == "frac-pred":
        pred = pred.astype(float) + 0.5
        needle = "integer"
    elif kind == "2d":
        y, pred, rob = y[:, None], pred[:, None], rob[:, None]
        needle = "1-d"
    elif kind == "neg-label":
        y = y.copy()
        y[draw(st.integers(0, n - 1))] = -draw(st.integers(1, 5))
        needle = "label"
    else:
        y = y.astype(float)
        y[0] = float("inf")
        needle = "inf"
    return kind, y, pred, rob, needle


@FUZZ
@given(bad_partition_inputs())
def test_partition_refuses_bad_records(case):
    kind, y, pred, rob, needle = case
    TRIED["metrics.partition"] += 1
    with pytest.raises(InputError) as e:
        metrics.partition(y, pred, rob)
    assert needle in str(e.value).lower(), (kind, str(e.value))


# ---------------------------------------------------------------- datasets in memory

@st.composite
def bad_dataset(draw):
    n = draw(st.integers(0, 6))
    x = torch.rand(n, 2)
    y = torch.zeros(n, dtype=torch.long)
    kind = draw(st.sampled_from(["empty", "nan", "range", "label", "count"] if n else ["empty"]))
    if kind == "nan":
        x[draw(st.integers(0, n - 1)), 0] = draw(st.sampled_from([float("nan"), float("inf")]))
        needle = "finite"
    elif kind == "range":
        x[0, 1] = draw(st.sampled_from([-0.1, 1.5, 255.0]))
        needle = "[0, 1]"
    elif kind == "label":
        y[0] = draw(st.sampled_from([-1, 3, 100]))
        needle = "label"
    elif kind == "count":
        y = y[:-1]
        needle = "labels"
    else:
        x, y = x[:0], y[:0]
        needle = "empty"
    return x, y, needle


@FUZZ
@given(bad_dataset())
def test_tensor_dataset_refuses_bad_data(case):
    x, y, needle = case
    TRIED["data.TensorDataset"] += 1
    with pytest.raises(DataError, match=None) as e:
        TensorDataset(x, y, 3, "fuzz")
    assert needle.lower() in str(e.value).lower()


@FUZZ
@given(name=st.text(min_size=0, max_size=12), split=st.sampled_from(["train", "test", "val", "", "TRAIN"]))
def test_data_load_refuses_unknown_names(name, split):
    from abstain import data

    TRIED["data.load names"] += 1
    if name in data.DATASETS and split in data.SPLITS:
        return
    with pytest.raises(DataError) as e:
        data.load(name, split)
    assert ("unknown" in str(e.value) or "root" in str(e.value))


# ---------------------------------------------------------------- checkpoints: truncated / corrupt

def _tiny_checkpoint(d: Path) -> Path:
    net = models.create("mlp", 3, in_features=2)
    checkpoint.save_checkpoint(d, net, {"arch": "mlp", "num_classes": 3, "dataset": "gauss3",
                                        "model_kwargs": {"in_features": 2}, "epoch": 2},
                               {"epoch": 2, "rng": torch.get_rng_state(),
                                "optimizer": {"state": {0: {"momentum_buffer": torch.ones(3)}}}})
    return d


_GOOD: dict[str, bytes] = {}


def _good_ckpt(tmp_path_factory) -> dict[str, bytes]:
    """The bytes of one good checkpoint (built once; not a fixture so that Hypothesis
    does not print 50 kB of bytes on failure)."""
    if not _GOOD:
        d = _tiny_checkpoint(tmp_path_factory.mktemp("good"))
        _GOOD.update({p.name: p.read_bytes() for p in d.iterdir()})
    return _GOOD


@FUZZ
@given(which=st.sampled_from(["model.safetensors", "meta.json", "train_state.pt"]),
       frac=st.floats(0.0, 1.0, exclude_max=True), mode=st.sampled_from(["truncate", "flip", "zero"]),
       seed=st.integers(0, 2**16))
def test_corrupt_checkpoint_is_refused_clearly(tmp_path_factory, which, frac, mode, seed):
    """Truncate at a random offset or overwrite random bytes: loading raises
    CheckpointError naming the file, or (for byte flips that keep the file valid)
    loads without any other exception."""
    good_ckpt = _good_ckpt(tmp_path_factory)
    d = tmp_path_factory.mktemp("ck")
    for name, data in good_ckpt.items():
        (d / name).write_bytes(data)
    blob = bytearray(good_ckpt[which])
    cut = int(frac * (len(blob) - 1))  # at least the last byte (meta.json: the closing brace) goes
    rng = random.Random(seed)
    if mode == "truncate":
        blob = blob[:cut]
    elif mode == "flip":
        for _ in range(rng.randint(1, 16)):
            i = rng.randrange(len(blob))
            blob[i] = rng.randrange(256)
    else:
        end = min(len(blob), cut + rng.randint(1, 4096))
        blob[cut:end] = bytes(end - cut)
    (d / which).write_bytes(bytes(blob))
    TRIED[f"checkpoint {mode}"] += 1
    try:
        if which == "train_state.pt":
            checkpoint.load_train_state(d)
        else:
            checkpoint.load_checkpoint(d)
    except CheckpointError as e:
        msg = str(e)
        assert which in msg or "meta" in msg or str(d) in msg, msg
        assert "\n" not in msg.strip(), msg
    else:
        assert mode != "truncate" or which != "meta.json", "a truncated meta.json was accepted"


@FUZZ
@given(frac=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_records_refused_or_prefix(tmp_path_factory, frac):
    """A records CSV cut anywhere: read_records raises DataError or returns a prefix of
    the rows (a cut at a line boundary cannot be told apart; records are written
    atomically so this only happens to files edited by hand)."""
    d = tmp_path_factory.mktemp("rec")
    cols = {"index": np.arange(20), "label": np.arange(20) % 3, "robust@0.1": np.arange(20) % 2 == 0,
            "radius": np.linspace(0, 1, 20)}
    p = records.write_records(d / "r.csv", cols)
    blob = p.read_bytes()
    p.write_bytes(blob[:int(frac * len(blob))])
    TRIED["records truncate"] += 1
    try:
        got = records.read_records(p)
    except DataError as e:
        assert "r.csv" in str(e)
    else:
        n = len(got["index"])
        assert set(got) == set(cols) and n < 20
        assert np.array_equal(got["index"], cols["index"][:n])


# ---------------------------------------------------------------- data files: truncated / corrupt

_CIFAR: dict[str, bytes] = {}


@FUZZ
@given(victim=st.sampled_from(["data_batch_1", "data_batch_3", "test_batch", "batches.meta"]),
       frac=st.floats(0.0, 1.0, exclude_max=True), mode=st.sampled_from(["truncate", "flip"]),
       seed=st.integers(0, 2**16))
def test_corrupt_cifar_files_are_refused(tmp_path_factory, victim, frac, mode, seed):
    """A CIFAR batch cut at a random offset or with random bytes overwritten: DataError
    naming the file (truncation always; byte flips may leave a readable file, e.g. in
    pixel data, and must then load as a valid dataset)."""
    from abstain import data

    from reliability_helpers import write_fake_cifar10

    if not _CIFAR:
        d0 = write_fake_cifar10(tmp_path_factory.mktemp("cifar0"), n=3)
        _CIFAR.update({p.name: p.read_bytes() for p in d0.iterdir()})
    root = tmp_path_factory.mktemp("cifar")
    d = root / "cifar-10-batches-py"
    d.mkdir()
    for name, blob in _CIFAR.items():
        (d / name).write_bytes(blob)
    blob = bytearray(_CIFAR[victim])
    rng = random.Random(seed)
    if mode == "truncate":
        blob = blob[:int(frac * len(blob))]
    else:
        for _ in range(rng.randint(1, 8)):
            blob[rng.randrange(len(blob))] = rng.randrange(256)
    (d / victim).write_bytes(bytes(blob))
    TRIED[f"cifar {mode}"] += 1
    split = "test" if victim in ("test_batch", "batches.meta") else "train"
    try:
        ds = data.load("cifar10", split, root=str(root))
    except DataError as e:
        assert victim in str(e), str(e)
    else:
        assert mode == "flip", "a truncated CIFAR file was accepted"
        assert ds.x.shape[1:] == (3, 32, 32) and 0 <= float(ds.x.min()) and float(ds.x.max()) <= 1


# ---------------------------------------------------------------- configs

BASE_CONFIG = {
    "data": {"name": "digits", "val_fraction": 0.1},
    "model": {"arch": "cnn"},
    "train": {"loss": "trades", "epochs": 2, "batch_size": 64, "lr": 0.05, "seed": 0},
    "loss": {"eps": 0.1, "norm": "linf", "steps": 3, "beta": 1.0},
}
# (section, key) -> bad values whose refusal must name the key
_NUMERIC_KEYS = {
    ("train", "epochs"): "int+", ("train", "batch_size"): "int+", ("train", "lr"): "num+",
    ("train", "seed"): "int0", ("train", "momentum"): "frac", ("train", "weight_decay"): "num0",
    ("train", "val_steps"): "int+", ("data", "val_fraction"): "frac",
    ("loss", "eps"): "eps", ("loss", "steps"): "int+", ("loss", "step_size"): "num+",
    ("loss", "beta"): "num0", ("loss", "sigma"): "num+", ("loss", "k"): "int+",
    ("loss", "gamma"): "num0",
}
_WRONG_TYPES = st.sampled_from(["ten", [1, 2], {"a": 1}, True, "1e-3"])


@st.composite
def bad_config(draw):
    cfg = json.loads(json.dumps(BASE_CONFIG))
    kind = draw(st.sampled_from(["numeric", "type", "unknown-key", "unknown-section", "choice",
                                 "section-type", "missing"]))
    if kind in ("numeric", "type"):
        section, key = draw(st.sampled_from(sorted(_NUMERIC_KEYS)))
        rule = _NUMERIC_KEYS[(section, key)]
        if kind == "type":
            value = draw(_WRONG_TYPES)
        else:
            bad = [float("nan"), float("inf"), -float("inf"), -1, -1e-6 if "num" in rule or rule in ("frac", "eps") else -1]
            if rule in ("int+", "num+"):
                bad += [0]
            if rule == "frac":
                bad += [1, 1.5, 1e9]
            if rule == "eps":
                bad += [1.5, 1e300]  # linf eps beyond the pixel range
            if rule.startswith("int"):
                bad += [0.5, 2.5]  # not an integer
            value = draw(st.sampled_from(bad))
        cfg[section][key] = value
        return cfg, key
    if kind == "unknown-key":
        section = draw(st.sampled_from(sorted(cfg)))
        key = draw(st.sampled_from(["epoch", "learning_rate", "bacth_size", "eps_", "foo"]))
        cfg[section][key] = 1
        return cfg, key
    if kind == "unknown-section":
        name = draw(st.sampled_from(["trian", "optim", "eval", "Data"]))
        cfg[name] = {"x": 1}
        return cfg, name
    if kind == "choice":
        section, key = draw(st.sampled_from([("loss", "norm"), ("train", "schedule"), ("train", "loss"),
                                              ("data", "augment"), ("train", "amp")]))
        cfg[section][key] = draw(st.sampled_from(["l3", "Linf", "", "cosine", "bogus"]))
        return cfg, key
    if kind == "section-type":
        section = draw(st.sampled_from(sorted(cfg)))
        cfg[section] = draw(st.sampled_from([1, "x", [1]]))
        return cfg, section
    section, key = draw(st.sampled_from([("data", "name"), ("model", "arch")]))
    del cfg[section][key]
    return cfg, key


def test_base_config_is_valid():
    from abstain import config

    config.validate(BASE_CONFIG)


@FUZZ
@given(bad_config())
def test_bad_configs_are_refused_naming_the_key(case):
    from abstain import config
    from abstain.errors import ConfigError

    cfg, needle = case
    TRIED["config.validate"] += 1
    with pytest.raises(ConfigError) as e:
        config.validate(cfg)
    assert needle in str(e.value), (cfg, str(e.value))


@FUZZ
@given(text=st.text(max_size=80))
def test_garbage_toml_is_refused(tmp_path_factory, text):
    """Random text as a config file: ConfigError (invalid TOML or schema), never another
    exception."""
    from abstain import config
    from abstain.errors import ConfigError

    TRIED["config.load text"] += 1
    p = tmp_path_factory.mktemp("cfg") / "c.toml"
    p.write_text(text)
    with pytest.raises(ConfigError):
        config.load(p)


# ---------------------------------------------------------------- attacks, smoothing, evaluation

_NET: dict[str, torch.nn.Module] = {}


def _net() -> torch.nn.Module:
    if not _NET:
        torch.manual_seed(0)
        _NET["mlp"] = models.create("mlp", 3, in_features=2).eval()
    return _NET["mlp"]


@st.composite
def bad_attack_call(draw):
    """(kwargs for attack(model, x, y, **kw), needle in the message)."""
    n = draw(st.integers(1, 5))
    x = torch.rand(n, 2)
    y = torch.randint(0, 3, (n,))
    kw = {"eps": 0.1, "norm": "linf", "steps": 3}
    kind = draw(st.sampled_from(["nan", "inf", "range", "eps", "norm", "steps", "y-len", "y-float",
                                 "y-2d", "y-neg", "y-big", "empty"]))
    if kind in ("nan", "inf"):
        x[draw(st.integers(0, n - 1)), draw(st.integers(0, 1))] = float(kind)
        needle = "nan or inf"
    elif kind == "range":
        x[0, 0] = draw(st.sampled_from([-0.01, 1.01, 255.0, -1e9]))
        needle = "[0, 1]"
    elif kind == "eps":
        kw["eps"] = draw(st.sampled_from([-0.1, float("nan"), float("inf"), "big"]))
        needle = "eps"
    elif kind == "norm":
        kw["norm"] = draw(st.sampled_from(["l1", "Linf", "", "inf"]))
        needle = "norm"
    elif kind == "steps":
        kw["steps"] = draw(st.sampled_from([-1, 2.5, "10"]))
        needle = "steps"
    elif kind == "y-len":
        y = torch.cat([y, y[:1]])
        needle = "y"
    elif kind == "y-float":
        y = y.float()
        needle = "integer"
    elif kind == "y-2d":
        y = y[:, None]
        needle = "1-d"
    elif kind == "y-neg":
        y[0] = -1
        needle = "negative"
    elif kind == "y-big":
        y[0] = draw(st.sampled_from([3, 10, 2**40]))
        needle = "class"
    else:
        x, y = x[:0], y[:0]
        needle = "batch"
    return kind, x, y, kw, needle


@FUZZ
@given(case=bad_attack_call(), fn=st.sampled_from(["pgd", "apgd"]))
def test_attacks_refuse_bad_inputs(case, fn):
    from abstain import attacks

    kind, x, y, kw, needle = case
    TRIED[f"attacks.{fn}"] += 1
    with pytest.raises(InputError) as e:
        getattr(attacks, fn)(_net(), x, y, **kw)
    assert needle in str(e.value).lower(), (kind, str(e.value))


@FUZZ
@given(case=bad_attack_call())
def test_is_robust_refuses_bad_inputs(case):
    from abstain import attacks

    kind, x, y, kw, needle = case
    if kind.startswith("y-"):  # is_robust takes no labels
        return
    TRIED["attacks.is_robust"] += 1
    with pytest.raises(InputError) as e:
        attacks.is_robust(_net(), x, **kw)
    assert needle in str(e.value).lower(), (kind, str(e.value))


@st.composite
def bad_certify_call(draw):
    x = torch.rand(2)
    kw = {"n0": 10, "n": 50, "alpha": 0.001, "batch_size": 25}
    sigma = 0.25
    kind = draw(st.sampled_from(["nan", "range", "n0", "n", "alpha", "batch", "sigma", "shape"]))
    if kind == "nan":
        x[draw(st.integers(0, 1))] = draw(st.sampled_from([float("nan"), float("inf")]))
        needle = "nan or inf"
    elif kind == "range":
        x[1] = draw(st.sampled_from([-0.5, 2.0]))
        needle = "[0, 1]"
    elif kind in ("n0", "n", "batch"):
        key = {"batch": "batch_size"}.get(kind, kind)
        kw[key] = draw(st.sampled_from([0, -5, 1.5, float("nan"), "100", True]))
        needle = key
    elif kind == "alpha":
        kw["alpha"] = draw(st.sampled_from([0, 1, -0.1, 1.5, float("nan"), float("inf")]))
        needle = "alpha"
    elif kind == "sigma":
        sigma = draw(st.sampled_from([0, -0.25, float("nan"), float("inf")]))
        needle = "sigma"
    else:
        x = torch.rand(0)
        needle = "x"
    return kind, x, sigma, kw, needle


@FUZZ
@given(bad_certify_call())
def test_smooth_certify_refuses_bad_inputs(case):
    from abstain.smoothing import Smooth

    kind, x, sigma, kw, needle = case
    TRIED["smoothing.Smooth.certify"] += 1
    with pytest.raises(InputError) as e:
        Smooth(_net(), 3, sigma).certify(x, generator=torch.Generator().manual_seed(0), **kw)
    assert needle in str(e.value).lower(), (kind, str(e.value))


# ---------------------------------------------------------------- the CLI: bad arguments

_NAN, _INF = "nan", "inf"
# (command, option, bad values, a word the message must contain)
CLI_CASES = [
    ("evaluate", "--eps", ["-0.1", _NAN, _INF, "-inf"], "eps"),
    ("evaluate", "--steps", ["-1"], "steps"),
    ("evaluate", "--batch-size", ["0", "-8"], "batch"),
    ("evaluate", "--samples", ["0", "-3"], "samples"),
    ("evaluate", "--norm", ["l3", "Linf"], "norm"),
    ("evaluate", "--steps", ["ten", "2.5"], "steps"),
    ("certify", "--sigma", ["0", "-0.25", _NAN, _INF], "sigma"),
    ("certify", "--alpha", ["0", "1", "1.5", "-0.01", _NAN], "alpha"),
    ("certify", "--n", ["0", "-100"], "n"),
    ("certify", "--n0", ["0", "-1"], "n0"),
    ("certify", "--noise-batch-size", ["0", "-5"], "batch"),
    ("certify", "--samples", ["0", "-1"], "samples"),
    ("certify", "--eps", ["-0.5", _NAN, _INF], "eps"),
    ("certify", "--chunk", ["0", "-2"], "chunk"),
    ("train", "--set", ["train.lr=-1", "train.lr=nan", "train.batch_size=0", "train.epochs=0",
                        "train.epochs=1.5", "train.bogus=1", "loss.eps=-0.1", "train.loss=\"l0\"",
                        "data.val_fraction=1.5", "model.arch=\"vgg\"", "data.name=\"nope\"",
                        "train.seed=-1", "train.momentum=2"], "train|loss|data|model"),
]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """A finished tiny run directory (gauss3 MLP, 1 epoch), trained in-process."""
    from abstain import cli

    d = tmp_path_factory.mktemp("clirun")
    (d / "c.toml").write_text('[data]\nname = "gauss3"\n[model]\narch = "mlp"\n[train]\nloss = "standard"\n'
                              'epochs = 1\nbatch_size = 100\nlr = 0.05\n')
    assert cli.main(["train", "--config", str(d / "c.toml"), "--out", str(d / "run"), "--device", "cpu"]) == 0
    return d


@pytest.mark.parametrize("command,option,value,needle",
                         [(c, o, v, n) for c, o, vs, n in CLI_CASES for v in vs])
def test_cli_refuses_bad_arguments_and_writes_nothing(cli_run, capsys, command, option, value, needle):
    """Every (command, option, bad value) of CLI_CASES, exhaustively (each is cheap)."""
    from reliability_helpers import assert_clean_refusal, run_main, tree_snapshot

    TRIED[f"cli {command}"] += 1
    before = tree_snapshot(cli_run)
    if command == "train":
        out = cli_run / "new-run"
        argv = ["train", "--config", cli_run / "c.toml", "--out", out, "--device", "cpu", option, value]
    elif command == "evaluate":
        argv = ["evaluate", "--run", cli_run / "run", "--eps", "0.1", "--steps", "2", "--samples", "5",
                "--device", "cpu", f"{option}={value}"]
    else:
        argv = ["certify", "--run", cli_run / "run", "--sigma", "0.25", "--eps", "0.1", "--n0", "8", "--n", "40",
                "--samples", "3", "--noise-batch-size", "40", "--device", "cpu", f"{option}={value}"]
    rc, _, err = run_main(argv, capsys)
    msg = assert_clean_refusal(rc, err)
    assert any(w in msg.lower() for w in needle.split("|")), (argv, msg)
    assert tree_snapshot(cli_run) == before, f"a refused {command} wrote files: {argv}"


def test_runs_are_not_clobbered(cli_run, capsys, tmp_path):
    """Issue 11 part 2: an existing run is never overwritten without --overwrite, and
    --resume with a changed config is refused naming the differing keys (files unchanged)."""
    import shutil

    from reliability_helpers import assert_clean_refusal, run_main, tree_snapshot

    run = shutil.copytree(cli_run / "run", tmp_path / "run")
    assert run_main(["evaluate", "--run", run, "--eps", "0.1", "--steps", "1", "--samples", "5",
                     "--device", "cpu"], capsys)[0] == 0
    before = tree_snapshot(run)
    rc, _, err = run_main(["train", "--config", cli_run / "c.toml", "--out", run, "--device", "cpu"], capsys)
    assert_clean_refusal(rc, err, "--overwrite", "--resume")
    rc, _, err = run_main(["train", "--config", cli_run / "c.toml", "--out", run, "--resume", "--device", "cpu",
                           "--set", "train.lr=0.01", "--set", "train.seed=3"], capsys)
    assert_clean_refusal(rc, err, "train.lr", "train.seed")
    rc, _, err = run_main(["evaluate", "--run", run, "--eps", "0.1", "--steps", "1", "--samples", "5",
                           "--device", "cpu"], capsys)
    assert_clean_refusal(rc, err, "--overwrite")
    assert tree_snapshot(run) == before
    TRIED["cli clobber"] += 3


# ---------------------------------------------------------------- closing count

def test_zzz_report_fuzz_counts():
    total = sum(TRIED.values())
    print(f"\n[fuzz] inputs tried: {total} {dict(sorted(TRIED.items()))}")
    assert total > 0
