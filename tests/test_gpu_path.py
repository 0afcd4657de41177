"""The paper-scale GPU path, checked on CPU where a CPU can show it (issue 17).

* clean targets (TRADES p(x), ERA/DGA F(x)) are fp32 inside the trainer's autocast (CPU bf16);
* noise and CRA losses draw distinct noise on 2 gloo ranks (the global RNG is seeded alike);
* more torchrun ranks than GPUs: a clear message (mocked device count), gloo shares a GPU;
* torch.compile: the attacks bypass the compiled module, one graph per run (a counting backend);
* the models pool without ``adaptive_avg_pool2d`` (no deterministic CUDA backward) and give the
  same outputs; a missing kornia is named; AutoAugment per image gives the same images with
  one index copy;
* ``tools/gpu_check.sh --device cpu --tiny`` passes (the dry run of the GPU check).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from abstain import distributed, models
from abstain.data.base import TensorDataset
from abstain.errors import ConfigError
from abstain.losses import adversarial, get
from abstain.config import LossSettings, TrainSettings, resolve_loss
from abstain.train import fit

from reliability_helpers import free_port

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


# --------------------------------------------------------------------------- item 4: fp32 targets
class Spy(nn.Module):
    """A small CNN that records (training, grad enabled, output dtype) of every call."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                                 nn.Linear(4 * 6 * 6, 3))
        self.calls: list[tuple[bool, bool, torch.dtype]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        self.calls.append((self.training, torch.is_grad_enabled(), out.dtype))
        return out


def _batch(n: int = 6):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_clean_target_is_fp32_and_equal_under_bf16_autocast():
    model, (x, _) = Spy().train(), _batch()
    p_ref, pred_ref = adversarial._clean_eval(model, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        p_amp, pred_amp = adversarial._clean_eval(model, x)
        assert model(x).dtype == torch.bfloat16           # autocast is really on
    assert p_amp.dtype == torch.float32
    assert torch.equal(p_amp, p_ref) and torch.equal(pred_amp, pred_ref)
    assert model.training                                 # the mode is restored


@pytest.mark.parametrize("loss,extra", [("trades", {}), ("era", {}), ("dga", {}),
                                        ("era", {"variant": "authors"})])
def test_losses_take_clean_targets_and_attacks_in_fp32_under_autocast(loss, extra):
    model, (x, y) = Spy().train(), _batch()
    params = {"eps": 0.1, "steps": 2, "generator": torch.Generator().manual_seed(0), **extra}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value, _ = get(loss)(model, x, y, params)
    no_grad = [c for c in model.calls if not c[1]]        # the clean target p(x) / F(x)
    attack = [c for c in model.calls if c[1] and not c[0] and c[2] == torch.float32]
    assert no_grad and all(c[2] == torch.float32 for c in no_grad)
    assert len(attack) >= 2                               # the inner attack's steps, fp32
    assert any(c[2] == torch.bfloat16 for c in model.calls)   # the training passes use bf16
    assert torch.isfinite(value)


# --------------------------------------------------------------------------- item 5: noise per rank
class InputRecorder(nn.Module):
    """Linear model on flattened inputs; keeps every training input it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(16, 3)
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.seen.append(x.detach().clone())
        return self.lin(x.flatten(1))


def _zeros_data() -> TensorDataset:
    # every input is 0, so what the model sees is the noise itself
    return TensorDataset(torch.zeros(8, 1, 4, 4), torch.arange(8) % 3, 3, "zeros")


def _noise_worker(rank: int, world: int, port: int, tmp: str) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    try:
        for loss, params in (("noise", {"sigma": 0.5}), ("cra", {"sigma": 0.5, "k": 2})):
            torch.manual_seed(0)                  # what `abstain train` does on every rank
            model = InputRecorder()
            fit(model, _zeros_data(), TrainSettings(loss=loss, epochs=1, batch_size=8, lr=0.01, seed=5),
                LossSettings(**params))
            torch.save(torch.cat(model.seen), os.path.join(tmp, f"{loss}-rank{rank}.pt"))
    finally:
        distributed.shutdown(synchronise=False)




def test_two_gloo_ranks_draw_distinct_noise(tmp_path):
    mp.start_processes(_noise_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    for loss, n_seen in (("noise", 4), ("cra", 8)):
        a = torch.load(tmp_path / f"{loss}-rank0.pt", weights_only=True)
        b = torch.load(tmp_path / f"{loss}-rank1.pt", weights_only=True)
        assert a.shape == b.shape == (n_seen, 1, 4, 4)
        assert a.std() > 0.3 and b.std() > 0.3            # σ = 0.5 noise was added
        assert not torch.allclose(a, b, atol=0.1)         # each rank its own noise
        assert not torch.allclose(a[: n_seen // 2], a[n_seen // 2:], atol=0.1)


def test_noise_losses_use_the_given_generator():
    model, (x, y) = Spy(), _batch()
    for loss, params in (("noise", {"sigma": 0.3}), ("cra", {"sigma": 0.3, "k": 2})):
        v1, _ = get(loss)(model, x, y, {**params, "generator": torch.Generator().manual_seed(3)})
        torch.manual_seed(99)                             # the global RNG does not matter
        v2, _ = get(loss)(model, x, y, {**params, "generator": torch.Generator().manual_seed(3)})
        v3, _ = get(loss)(model, x, y, {**params, "generator": torch.Generator().manual_seed(4)})
        assert torch.equal(v1, v2) and not torch.equal(v1, v3)


# --------------------------------------------------------------------------- item 2: ranks vs GPUs
@pytest.fixture
def two_ranks_one_gpu(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.delenv(distributed.BACKEND_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    calls: dict[str, object] = {}
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.setdefault("set_device", i))
    monkeypatch.setattr(torch.distributed, "init_process_group",
                        lambda backend, **kw: calls.setdefault("backend", backend))
    return calls


def test_more_ranks_than_gpus_is_a_clear_error(two_ranks_one_gpu):
    with pytest.raises(ConfigError) as e:
        distributed.init_from_env(torch.device("cuda"))
    msg = str(e.value)
    assert "2 processes" in msg and "1 GPU" in msg and "--nproc-per-node 1" in msg
    assert "ABSTAIN_DIST_BACKEND=gloo" in msg
    assert two_ranks_one_gpu == {}                        # nothing was started


def test_gloo_shares_one_gpu_between_ranks(two_ranks_one_gpu, monkeypatch):
    monkeypatch.setenv(distributed.BACKEND_ENV, "gloo")
    assert distributed.init_from_env(torch.device("cuda"))
    assert two_ranks_one_gpu == {"set_device": 0, "backend": "gloo"}


def test_no_gpu_under_torchrun_is_a_clear_error(two_ranks_one_gpu, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ConfigError, match="no GPU"):
        distributed.init_from_env(torch.device("cuda"))


# --------------------------------------------------------------------------- item 7: compile
def test_compile_sees_only_the_training_passes(monkeypatch):
    from torch._dynamo import register_backend, reset

    graphs: list[int] = []

    @register_backend(name="abstain_test_count")
    def _count(gm, example_inputs):                       # noqa: ANN001 - dynamo's signature
        graphs.append(len(example_inputs))
        return gm.forward

    reset()
    monkeypatch.setenv("ABSTAIN_COMPILE_BACKEND", "abstain_test_count")
    data = TensorDataset(torch.rand(32, 1, 6, 6), torch.arange(32) % 3, 3, "rand")
    for loss in ("trades", "era"):
        graphs.clear()
        reset()
        torch.manual_seed(0)   # a model without side effects (a list append is a guard)
        plain = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                              nn.Linear(4 * 6 * 6, 3))
        fit(plain, data, TrainSettings(loss=loss, epochs=1, batch_size=16, lr=0.01, compile=True),
            LossSettings(eps=0.1, steps=2))
        # train mode, grad on, fixed shapes: one graph for all training passes; the attacks
        # (eval mode, no parameter grads) and the clean target (no grad) would each add one
        assert len(graphs) == 1, (loss, graphs)
    reset()


def test_attack_view_unwraps_compile_and_ddp():
    inner = Spy()
    compiled = torch.compile(inner, backend="eager")
    assert adversarial.attack_view(compiled) is inner
    assert adversarial.attack_view(inner) is inner


# --------------------------------------------------------------------------- item 1: pooling
def _ops(model: nn.Module, x: torch.Tensor) -> set[str]:
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: set[str] = set()

    class Log(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            seen.add(str(func.overloadpacket))
            return func(*args, **(kwargs or {}))

    with Log():
        model(x).sum().backward()
    return seen


@pytest.mark.parametrize("name,kw", [("resnet18", {}), ("resnet110", {}),
                                     ("wrn-28-10", {}), ("dm-wrn-28-10", {})])
def test_models_pool_without_adaptive_avg_pool(name, kw):
    from abstain.models import resnet, wideresnet

    model = models.create(name, 10, **kw).eval()
    # a narrow stand-in of the same class where the real one is large (same forward code)
    if name == "wrn-28-10":
        model = wideresnet.WideResNet(10, 1, 10).eval()
    elif name == "dm-wrn-28-10":
        model = wideresnet.DMWideResNet(10, 1, 10, (0.5,), (0.25,)).eval()
    elif name == "resnet110":
        model = resnet.CohenResNet(8, 10, (0.5,), (0.25,)).eval()
    x = torch.rand(2, 3, 32, 32)
    ops = _ops(model, x)
    assert "aten.mean" in ops and not any("adaptive_avg_pool" in o for o in ops)


def test_global_avg_pool_equals_adaptive_pooling_bitwise():
    from abstain.models.resnet import global_avg_pool

    g = torch.Generator().manual_seed(0)
    for shape in [(3, 640, 8, 8), (2, 2048, 4, 4), (2, 16, 7, 5)]:
        x = torch.randn(*shape, generator=g)
        for xx in (x, x.contiguous(memory_format=torch.channels_last)):
            assert torch.equal(global_avg_pool(xx), F.adaptive_avg_pool2d(xx, 1).flatten(1))


# --------------------------------------------------------------------------- items 3, 9: augment
def test_missing_kornia_is_named(monkeypatch):
    from abstain.data import augment

    for mod in [m for m in sys.modules if m == "kornia" or m.startswith("kornia.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "kornia", None)      # import kornia -> ImportError
    with pytest.raises(ConfigError) as e:
        augment.build("standard", (3, 32, 32))
    assert "kornia" in str(e.value) and "pip install" in str(e.value)
    assert augment.build("none", (3, 32, 32))(torch.ones(1, 3, 32, 32)).sum() == 3 * 32 * 32


def test_autoaugment_per_image_is_unchanged_with_one_index_copy():
    from abstain.data.augment import _PerImagePolicy

    policy = _PerImagePolicy("cifar10")
    x = torch.rand(24, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def per_group(xx: torch.Tensor) -> torch.Tensor:      # the former implementation
        choice = torch.randint(len(policy.subpolicies), (xx.shape[0],))
        out = xx.clone()
        for i in torch.unique(choice).tolist():
            idx = torch.nonzero(choice == i).flatten()
            out[idx] = policy.subpolicies[i](xx[idx]).to(xx.dtype)
        return out

    torch.manual_seed(7)
    new = policy(x)
    torch.manual_seed(7)
    old = per_group(x)
    assert torch.equal(new, old) and not torch.equal(new, x)


# --------------------------------------------------------------------------- tools/gpu_check.sh
def _gpu_check(tmp_path: Path, *args: str, **extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra}
    env.pop("OUT", None)
    return subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), "--out", str(tmp_path), *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


def test_gpu_check_dry_run_on_cpu(tmp_path):
    r = _gpu_check(tmp_path, "--device", "cpu", "--tiny")
    assert r.returncode == 0, r.stderr[-3000:]
    # only the summary and the log under --out ($OUT on a device machine brings back few files)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_check.json", "gpu_check.log"]
    assert "[gpu_check] bench: ok" in (tmp_path / "gpu_check.log").read_text()
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    steps = report["steps"]
    assert report["ok"] and set(steps) == {"train_era_bf16", "train_trades_fp16", "evaluate", "train_noise",
                                           "certify", "ddp", "cpu_vs_cuda", "compile", "bench"}
    assert all(s["ok"] for s in steps.values())
    assert steps["train_era_bf16"]["finite"] and steps["train_era_bf16"]["loss"] == "era"
    assert steps["evaluate"]["apgd-ce"]["samples"] == steps["evaluate"]["strong"]["samples"] == 20
    assert steps["certify"]["fixed"]["samples"] == steps["certify"]["sequential"]["samples"] == 3
    assert steps["ddp"]["evaluate_2ranks_vs_1proc"] == {"rows": [20, 20], "differing_rows": 0, "equal": True}
    assert steps["cpu_vs_cuda"]["records"]["equal"]
    assert steps["compile"]["compiled_frames"] >= 1 and steps["compile"]["recompiles"] == 0
    for key in ("trades_step_vs_floor", "era_step_vs_floor", "amp_speedup"):
        assert steps["bench"]["train"][key] > 0
    assert all(v > 0 for v in steps["bench"]["certify"]["certify_vs_floor"].values())


def test_gpu_check_refuses_cuda_without_a_gpu(tmp_path):
    r = _gpu_check(tmp_path, "--device", "cuda", CUDA_VISIBLE_DEVICES="")   # no GPU seen
    assert r.returncode == 2 and "sees no GPU" in r.stderr
    assert not (tmp_path / "gpu_check.json").exists()


# --------------------------------------------------------------------------- item 8: batch feed
class _Event:
    """Stands in for torch.cuda.Event on a CPU: records and waits at once."""

    def record(self) -> None:
        pass

    def synchronize(self) -> None:
        pass


@pytest.mark.parametrize("mode", ["cpu", "resident", "pinned"])
def test_batch_feed_gives_the_batches_of_the_order(mode, monkeypatch):
    """Every path of the feed (CPU indexing, GPU-resident gather, pinned double buffers; the
    last two with their CUDA calls stood in for on a CPU) gives x[order[a:b][rank::world]]."""
    from abstain.train import feed as feed_mod

    x, y = torch.rand(23, 2, 3, 3), torch.arange(23)
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t: t.clone())
    monkeypatch.setattr(torch.cuda, "Event", _Event)
    f = feed_mod.BatchFeed(x, y, torch.device("cpu"), batch=5)
    if mode != "cpu":   # the CUDA paths' logic, run on CPU tensors
        f.cuda, f.resident = True, mode == "resident"
        f.buffers = [(torch.empty(5, 2, 3, 3), torch.empty(5, dtype=y.dtype), None) for _ in range(2)]
    order = torch.randperm(23, generator=torch.Generator().manual_seed(0))
    f.start_epoch(order)
    for world in (1, 2):
        for rank in range(world):
            for start in range(0, 23, 5 * world):
                stop = min(23, start + 5 * world)
                xb, yb = f(start, stop, rank, world)
                idx = order[start:stop][rank::world]
                assert torch.equal(xb, x[idx]) and torch.equal(yb, y[idx])


# --------------------------------------------------------------------------- item 9: host reads
HOST_READS = {"aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten.is_nonzero",
              "aten.equal", "aten._unique2", "aten.unique_dim"}


def _host_reads_of_a_step(loss: str) -> list[str]:
    """Where a training step reads tensor values on the host (a device sync on CUDA): the
    innermost abstain source file of each read, counted on CPU with a dispatch mode."""
    import traceback

    from torch.utils._python_dispatch import TorchDispatchMode

    from abstain.train import loop

    origins: list[str] = []

    class Reads(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            if str(func.overloadpacket) in HOST_READS:
                frames = [f.filename for f in traceback.extract_stack() if "/abstain/" in f.filename]
                origins.append(frames[-1].split("/abstain/")[-1] if frames else "torch")
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    data = TensorDataset(torch.rand(64, 3, 8, 8), torch.arange(64) % 10, 10, "rand")
    s = TrainSettings(loss=loss, epochs=1, batch_size=16, lr=0.01)
    trainer = loop.Trainer(model, data, None, s, resolve_loss(s, LossSettings(eps=0.03, steps=3, sigma=0.25, k=2)),
                           None, None, "cpu", None, "train")
    trainer.wrap()
    order = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    trainer.feed.start_epoch(order)
    sums: dict[str, torch.Tensor] = {}
    trainer.step(0, 0, order, sums)
    with Reads():
        trainer.step(0, 1, order, sums)
    return origins


@pytest.mark.parametrize("loss", ["trades", "era", "dga", "noise", "cra"])
def test_training_step_reads_the_host_only_in_the_attack_checks(loss):
    # the attack core's input checks (attacks/core.py, validate.py) and, on CPU, its seed draw
    # are the only reads left; the trainer, the feed and the losses read nothing (on CUDA the
    # seed comes from a CPU generator)
    origins = _host_reads_of_a_step(loss)
    assert set(origins) <= {"validate.py", "attacks/core.py"}, origins
    if loss in ("noise", "cra"):
        assert origins == []


def test_cudnn_benchmark_only_while_training_on_cuda():
    from abstain.train.loop import _cudnn_benchmark

    before = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        with _cudnn_benchmark(True):
            assert torch.backends.cudnn.benchmark
        assert torch.backends.cudnn.benchmark is False     # restored for evaluation after it
        with _cudnn_benchmark(False):
            assert torch.backends.cudnn.benchmark is False
        torch.use_deterministic_algorithms(True, warn_only=True)
        with _cudnn_benchmark(True):
            assert torch.backends.cudnn.benchmark is False
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = before
