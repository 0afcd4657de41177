"""The paper-scale GPU path in one run (issue 17); called by tools/gpu_check.sh.

Random CIFAR-shaped data written in the real CIFAR-10 pickle layout (no dataset can be
downloaded on the GPU machine), then each step of the issue's list, each recorded in
``OUT/gpu_check.json`` as ``{"ok", "seconds", ...measurements}`` or ``{"ok": false,
"error"}``; the exit status is 1 when any step failed.

1. ``train_era_bf16``: one epoch of WRN-28-10 ERA (paper, targeted inner attacks, 10 steps),
   ``amp = "bf16"``, ``channels_last``, ``augment = "standard"`` (kornia);
2. ``train_trades_fp16``: the same model, TRADES with fp16 and the gradient scaler;
3. ``evaluate``: APGD with 40 steps on 500 test images (ε = 8/255 and 2ε);
4. ``certify``: a ResNet-110 trained one epoch with Gaussian noise, fixed N = 100,000 and
   ``--sequential``;
5. ``ddp``: torchrun with one NCCL rank (train), two gloo ranks sharing the one GPU
   (``ABSTAIN_DIST_BACKEND=gloo``: train, evaluate and certify; the records compared with
   one process);
6. ``cpu_vs_cuda``: a digits CNN trained on the CPU, evaluated on the CPU and on CUDA;
7. ``compile``: ``train.compile = true`` under ``TORCH_LOGS=recompiles``, recompiles counted;
8. ``bench``: bench/train.py, bench/certify.py, bench/attacks.py and bench/scale.py on the device.

``--tiny`` shrinks every size (a narrow WRN-10-1, 200 training images, few steps) and skips
bench/attacks.py and bench/scale.py; with ``--device cpu`` it is the dry run that
tests/test_gpu_path.py runs (torchrun ranks then use gloo, compile the eager backend, and
"cpu_vs_cuda" compares the CPU with itself).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import pickle
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CHILD_TIMEOUT_S = 300   # a child process (torchrun, the compile run, a bench script) past this fails its step
EPS = 8 / 255
# the H100 floors (bare loops): WRN-28-10 TRADES epoch of CIFAR-10 in minutes (10-step
# attack: 12 forward/backward passes per image), APGD-40 seconds per 10,000 images (one radius),
# ResNet-110 certification seconds per image at N = 100,000; goal: within 1.2x of each
FLOORS = {"trades_epoch_min": {"fp32": 1.7, "bf16": 1.0}, "apgd40_10k_s": 60.0, "certify_100k_s": 2.5}


# --------------------------------------------------------------------------- models (MODULE:FACTORY)
def wrn_10_1(num_classes: int):
    """A narrow WideResNet (depth 10, width 1) for the dry run: the WRN code path, tiny."""
    from abstain.models.wideresnet import WideResNet

    return WideResNet(10, 1, num_classes)


def wrn_16_4(num_classes: int):
    """WRN-16-4 for the compile step (inductor compiles it in far less time than WRN-28-10)."""
    from abstain.models.wideresnet import WideResNet

    return WideResNet(16, 4, num_classes)


def resnet_8(num_classes: int):
    """A depth-8 CIFAR ResNet of Cohen et al.'s layout for the dry run's certification."""
    from abstain.models.resnet import COHEN_CIFAR10_MEAN, COHEN_CIFAR10_STD, CohenResNet

    return CohenResNet(8, num_classes, COHEN_CIFAR10_MEAN, COHEN_CIFAR10_STD)


@dataclass(frozen=True)
class Sizes:
    n_train: int            # written as 5 data_batch files
    n_test: int
    batch: int              # divides n_train·(1 − val_fraction): no last-batch recompile
    val_fraction: float
    wrn: str                # the WRN-28-10 steps' model
    compile_arch: str
    certify_arch: str
    pgd_steps: int
    eval_samples: int
    eval_steps: int
    cert_samples: int
    cert_n: int
    digits_epochs: int
    bench: bool             # bench/attacks.py and bench/scale.py too
    eval_batch: int         # evaluate --batch-size (GPU: the whole 500 at once)
    cert_batch: int         # certify --noise-batch-size (noise samples per forward pass)


FULL = Sizes(5000, 1000, 140, 0.02, "wrn-28-10", "gpu_check:wrn_16_4", "resnet110", 10, 500, 40,
             10, 100_000, 3, True, 500, 10_000)
TINY = Sizes(200, 100, 49, 0.02, "gpu_check:wrn_10_1", "gpu_check:wrn_10_1", "gpu_check:resnet_8",
             2, 20, 5, 3, 1000, 1, False, 20, 100)   # n=1000: eps 0.5 reachable at sigma 0.25


# --------------------------------------------------------------------------- plumbing
class Report:
    """The JSON summary, written after every step so a killed run still leaves one."""

    def __init__(self, path: Path, head: dict[str, Any]) -> None:
        self.path, self.data = path, {**head, "steps": {}}

    @contextmanager
    def step(self, name: str) -> Iterator[dict[str, Any]]:
        rec: dict[str, Any] = {}
        t0 = time.perf_counter()
        print(f"[gpu_check] {name} ...", file=sys.stderr, flush=True)
        try:
            yield rec
            rec["ok"] = bool(rec.get("ok", True))
        except Exception as e:  # noqa: BLE001 - every failure is reported, then the next step runs
            rec.update(ok=False, error=f"{type(e).__name__}: {e}", trace=traceback.format_exc()[-3000:])
        rec["seconds"] = round(time.perf_counter() - t0, 2)
        print(f"[gpu_check] {name}: {'ok' if rec['ok'] else 'FAILED ' + rec.get('error', '')} "
              f"({rec['seconds']} s)", file=sys.stderr, flush=True)
        self.data["steps"][name] = rec
        self.write()

    def write(self) -> None:
        self.data["ok"] = all(r["ok"] for r in self.data["steps"].values())
        self.path.write_text(json.dumps(self.data, indent=2, default=str))


def env(**extra: str) -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT / "tools"), e.get("PYTHONPATH", "")])
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(k, None)
    e.update(extra)
    return e


def run_child(cmd: list[str], child_env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own process group; past :data:`CHILD_TIMEOUT_S` the whole group
    (torchrun and its ranks, say a hung NCCL rank) is killed and the step fails."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env,
                         cwd=ROOT, start_new_session=True)
    try:
        out, err = p.communicate(timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        raise RuntimeError(f"{' '.join(cmd[1:])} ran past {CHILD_TIMEOUT_S} s and was killed:\n"
                           f"{err[-2000:]}") from None
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def abstain(args: list[Any], nproc: int = 0, **extra_env: str) -> subprocess.CompletedProcess:
    """``abstain ARGS`` in a fresh process (``nproc`` > 0: under torchrun with that many ranks)."""
    args = [str(a) for a in args]
    if nproc:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "abstain", "--", *args]
    else:
        cmd = [sys.executable, "-m", "abstain", *args]
    r = run_child(cmd, env(ABSTAIN_QUIET="1", **extra_env))
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:])} exited {r.returncode}:\n{r.stderr[-2500:]}")
    return r


def cli(args: list[Any]) -> None:
    """``abstain ARGS`` in this process (no start-up cost)."""
    from abstain import cli as abstain_cli

    rc = abstain_cli.main([str(a) for a in args])
    if rc:
        raise RuntimeError(f"abstain {' '.join(map(str, args))} exited {rc}")


def read_records(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def compare_records(a: Path, b: Path, ignore: tuple[str, ...] = ("seconds",)) -> dict[str, Any]:
    """Rows and columns of two record files; ``differing_rows`` counts rows that differ in any
    column but ``ignore``."""
    ra, rb = read_records(a), read_records(b)
    cols = [c for c in (ra[0].keys() if ra else []) if c not in ignore]
    diff = sum(any(x[c] != y[c] for c in cols) for x, y in zip(ra, rb))
    return {"rows": [len(ra), len(rb)], "differing_rows": diff + abs(len(ra) - len(rb)),
            "equal": len(ra) == len(rb) and diff == 0}


# --------------------------------------------------------------------------- data and configs
def write_fake_cifar10(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Random images and labels in the distributed CIFAR-10 layout: ``cifar-10-batches-py/``
    with ``data_batch_1..5`` and ``test_batch`` (pickled dicts with bytes keys, uint8 ``data``
    N x 3072, ``labels`` lists) and ``batches.meta``. Pickle protocol 4: the originals are
    Python-2 pickles, whose byte strings need no global; Python 3's protocol 2 would write
    bytes through ``_codecs.encode``, which the loader's restricted unpickler refuses."""
    rng = np.random.default_rng(seed)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    per = n_train // 5
    for name, n in [(f"data_batch_{i}", per) for i in range(1, 6)] + [("test_batch", n_test)]:
        with open(d / name, "wb") as fh:
            pickle.dump({b"batch_label": name.encode(), b"labels": rng.integers(0, 10, n).tolist(),
                         b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"filenames": [f"{name}_{i}.png".encode() for i in range(n)]}, fh, protocol=4)
    with open(d / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [f"class{i}".encode() for i in range(10)]}, fh, protocol=4)
    return root


def write_config(path: Path, data: str, arch: str, train: dict[str, Any], loss: dict[str, Any],
                 root: Path | None = None, augment: str = "none", val_fraction: float = 0.02) -> Path:
    def value(v: Any) -> str:
        return json.dumps(v) if not isinstance(v, bool) else str(v).lower()

    lines = ["[data]", f'name = "{data}"', f"val_fraction = {val_fraction}", f'augment = "{augment}"']
    if root is not None:
        lines.append(f"root = {json.dumps(str(root))}")
    lines += ["[model]", f'arch = "{arch}"', "[train]"]
    lines += [f"{k} = {value(v)}" for k, v in {"epochs": 1, "schedule": "constant", "lr": 0.01,
                                                 "seed": 0, "val_steps": 2, **train}.items()]
    lines += ["[loss]"] + [f"{k} = {value(v)}" for k, v in loss.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def train_log(run: Path) -> dict[str, Any]:
    lines = (run / "log.jsonl").read_text().splitlines()
    return json.loads(lines[-1])


def finite_weights(run: Path) -> bool:
    from safetensors.torch import load_file

    import torch

    return all(bool(torch.isfinite(t).all()) for t in load_file(run / "model.safetensors").values())


# --------------------------------------------------------------------------- the steps
@dataclass
class Ctx:
    sz: Sizes
    device: str
    work: Path
    data: Path

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def per_epoch_minutes(self, seconds: float, n_train: int) -> float:
        """Minutes of a 50,000-image CIFAR-10 epoch at this run's speed."""
        return round(seconds / n_train * 50_000 / 60, 3)


def step_train(ctx: Ctx, rec: dict[str, Any], name: str, loss: str, amp: str) -> Path:
    """One epoch of ``loss`` on the WRN with ``amp``, channels_last and standard augmentation."""
    sz = ctx.sz
    loss_cfg: dict[str, Any] = {"eps": EPS, "steps": sz.pgd_steps}
    if loss == "era":
        loss_cfg["era_inner"] = "targeted"
    cfg = write_config(ctx.work / f"{name}.toml", "cifar10", sz.wrn,
                       {"loss": loss, "batch_size": sz.batch, "amp": amp, "channels_last": True},
                       loss_cfg, root=ctx.data, augment="standard", val_fraction=sz.val_fraction)
    run = ctx.work / name
    cli(["train", "--config", cfg, "--out", run, "--device", ctx.device, "--overwrite"])
    log = train_log(run)
    n_train = round(sz.n_train * (1 - sz.val_fraction))
    train_s = log["seconds"]
    rec.update(model=sz.wrn, loss=loss, amp=amp, pgd_steps=sz.pgd_steps, batch=sz.batch, n_train=n_train,
               epoch_seconds=train_s, loss_value=log.get("loss"),
               cifar10_epoch_minutes=ctx.per_epoch_minutes(train_s, n_train),
               finite=bool(finite_weights(run) and np.isfinite(log.get("loss", np.nan))))
    # the floor scaled by the passes per image: ERA's two attacks need 2K + 3, TRADES K + 2
    passes = 2 * sz.pgd_steps + 3 if loss == "era" else sz.pgd_steps + 2
    floor = FLOORS["trades_epoch_min"]["fp32" if amp == "off" else "bf16"] * passes / 12
    rec["vs_h100_floor"] = round(rec["cifar10_epoch_minutes"] / floor, 2)
    rec["ok"] = rec["finite"]
    return run


def step_train_fp16(ctx: Ctx, rec: dict[str, Any]) -> None:
    import torch

    run = step_train(ctx, rec, "train_trades_fp16", "trades", "fp16")
    state = torch.load(run / "train_state.pt", map_location="cpu", weights_only=True)
    rec["grad_scaler"] = {k: (float(v) if isinstance(v, (int, float)) else str(v))
                          for k, v in (state.get("scaler") or {}).items()}
    if ctx.cuda:   # the scaler is only used on CUDA (fp32 on a CPU)
        rec["ok"] = rec["ok"] and rec["grad_scaler"].get("scale", 0.0) > 0


def step_evaluate(ctx: Ctx, rec: dict[str, Any], run: Path) -> None:
    """APGD-CE (the paper's protocol, the floor's attack) and the default strong attack."""
    sz = ctx.sz
    for attack in ("apgd-ce", "strong"):
        out = ctx.work / f"evaluate-{attack}"
        cli(["evaluate", "--trust-code", "--run", run, "--out", out, "--eps", EPS, "--steps", sz.eval_steps,
             "--attack", attack, "--samples", sz.eval_samples, "--batch-size", sz.eval_batch,
             "--device", ctx.device, "--overwrite"])
        meta = json.loads((out / "results.json").read_text())["evaluate"]["meta"]
        rows = read_records(out / "records" / "evaluate.csv")
        per_10k = meta["seconds"] / len(rows) * 10_000
        rec[attack] = {"samples": len(rows), "steps": sz.eval_steps, "seconds": meta["seconds"],
                       "seconds_per_10k_images": round(per_10k, 2),
                       # two radii per image; the floor is one APGD-40 run, scaled by the steps
                       "vs_h100_floor": round(per_10k / (2 * FLOORS["apgd40_10k_s"] * sz.eval_steps / 40), 2)}
        rec["ok"] = rec.get("ok", True) and len(rows) == sz.eval_samples
    rec["note"] = f"each at eps and 2 eps (two attacks per image), --batch-size {sz.eval_batch}"


def train_noise_model(ctx: Ctx) -> Path:
    """ResNet-110 (the dry run: ResNet-8) trained one epoch with Gaussian noise (sigma 0.25)."""
    cfg = write_config(ctx.work / "noise.toml", "cifar10", ctx.sz.certify_arch,
                       {"loss": "noise", "batch_size": ctx.sz.batch, "amp": "bf16", "channels_last": True},
                       {"sigma": 0.25}, root=ctx.data, val_fraction=ctx.sz.val_fraction)
    run = ctx.work / "noise"
    cli(["train", "--config", cfg, "--out", run, "--device", ctx.device, "--overwrite"])
    return run


def step_certify(ctx: Ctx, rec: dict[str, Any], run: Path) -> None:
    sz = ctx.sz
    for mode, extra in (("fixed", []), ("sequential", ["--sequential"])):
        out = ctx.work / f"certify-{mode}"
        cli(["certify", "--trust-code", "--run", run, "--out", out, "--sigma", 0.25, "--eps", 0.25, 0.5, "--n0", 100,
             "--n", sz.cert_n, "--samples", sz.cert_samples, "--noise-batch-size", sz.cert_batch,
             "--device", ctx.device, *extra])
        sec = json.loads((out / "results.json").read_text())["certify"]
        rows = read_records(out / "records" / "certify.csv")
        rec[mode] = {"samples": len(rows), "n": sz.cert_n, "batch_size": sz.cert_batch,
                     "seconds": round(sec["seconds"], 2),
                     "seconds_per_image": round(sec["seconds"] / len(rows), 3),
                     "vs_h100_floor": round(sec["seconds"] / len(rows)
                                            / (FLOORS["certify_100k_s"] * sz.cert_n / 100_000), 2),
                     "metrics": sec.get("metrics")}
        rec["ok"] = rec.get("ok", True) and len(rows) == sz.cert_samples
    rec["model"] = sz.certify_arch


def step_ddp(ctx: Ctx, rec: dict[str, Any], noise_run: Path) -> None:
    """torchrun: one rank through NCCL (gloo on a CPU); two gloo ranks sharing the one GPU
    (train, then evaluate and certify with records compared to one process)."""
    sz = ctx.sz
    backend = "nccl" if ctx.cuda else "gloo"
    cfg = write_config(ctx.work / "ddp.toml", "cifar10", sz.certify_arch,
                       {"loss": "trades", "batch_size": sz.batch, "amp": "bf16", "channels_last": True},
                       {"eps": EPS, "steps": 3}, root=ctx.data, val_fraction=sz.val_fraction)
    # the dry run keeps one torchrun (each costs 10-15 s of start-up on a busy 2-core CPU):
    # the records comparison; DDP training and certify on 2 gloo CPU ranks are tested in
    # tests/test_ddp_train.py and tests/test_distributed.py
    trains = [("train_1rank_" + backend, 1, backend), ("train_2ranks_gloo", 2, "gloo")] if sz.bench else []
    for name, nproc, be in trains:
        run = ctx.work / name
        abstain(["train", "--config", cfg, "--out", run, "--device", ctx.device], nproc,
                ABSTAIN_DIST_BACKEND=be)
        log = train_log(run)
        rec[name] = {"epoch_seconds": log["seconds"], "loss": log.get("loss"), "finite": finite_weights(run)}
    ev = ["--eps", EPS, "--steps", sz.eval_steps, "--samples", sz.eval_samples, "--device", ctx.device]
    cli(["evaluate", "--trust-code", "--run", noise_run, "--out", ctx.work / "ev-1proc", *ev])
    abstain(["evaluate", "--trust-code", "--run", noise_run, "--out", ctx.work / "ev-2ranks", *ev], 2,
            ABSTAIN_DIST_BACKEND="gloo")
    rec["evaluate_2ranks_vs_1proc"] = compare_records(ctx.work / "ev-1proc/records/evaluate.csv",
                                                      ctx.work / "ev-2ranks/records/evaluate.csv")
    if sz.bench:
        ce = ["--sigma", 0.25, "--eps", 0.25, "--n0", 64, "--n", min(sz.cert_n, 10_000), "--samples",
              sz.cert_samples, "--device", ctx.device]
        cli(["certify", "--trust-code", "--run", noise_run, "--out", ctx.work / "ce-1proc", *ce])
        abstain(["certify", "--trust-code", "--run", noise_run, "--out", ctx.work / "ce-2ranks", *ce], 2,
                ABSTAIN_DIST_BACKEND="gloo")
        rec["certify_2ranks_vs_1proc"] = compare_records(ctx.work / "ce-1proc/records/certify.csv",
                                                         ctx.work / "ce-2ranks/records/certify.csv")
    rec["ok"] = (all(rec[k]["finite"] for k in rec if k.startswith("train_"))
                 and all(rec[k]["equal"] for k in rec if k.endswith("_vs_1proc")))


def step_cpu_vs_cuda(ctx: Ctx, rec: dict[str, Any]) -> None:
    """A digits CNN trained on the CPU; its evaluate records on the CPU and on ``ctx.device``."""
    cfg = write_config(ctx.work / "digits.toml", "digits", "cnn",
                       {"loss": "standard", "batch_size": 64, "lr": 0.05, "epochs": ctx.sz.digits_epochs},
                       {}, val_fraction=0.1)
    run = ctx.work / "digits"
    cli(["train", "--config", cfg, "--out", run, "--device", "cpu", "--overwrite"])
    ev = ["--eps", 0.1, "--steps", 20, "--samples", 200]
    cli(["evaluate", "--run", run, "--out", ctx.work / "digits-cpu", "--device", "cpu", *ev])
    cli(["evaluate", "--run", run, "--out", ctx.work / "digits-dev", "--device", ctx.device, *ev])
    a = read_records(ctx.work / "digits-cpu/records/evaluate.csv")
    b = read_records(ctx.work / "digits-dev/records/evaluate.csv")
    flags = [c for c in a[0] if c.startswith("robust@")]
    rec.update(devices=["cpu", ctx.device], samples=len(a), flags=flags,
               pred_agree=sum(x["pred"] == y["pred"] for x, y in zip(a, b)),
               flag_agree={c: sum(x[c] == y[c] for x, y in zip(a, b)) for c in flags},
               records=compare_records(ctx.work / "digits-cpu/records/evaluate.csv",
                                       ctx.work / "digits-dev/records/evaluate.csv"))
    # predictions must agree; an APGD flag may flip only at a near-tie (other kernels): <= 2%
    rec["ok"] = (len(a) == len(b) and rec["pred_agree"] == len(a)
                 and all(v >= 0.98 * len(a) for v in rec["flag_agree"].values()))


def step_compile(ctx: Ctx, rec: dict[str, Any]) -> None:
    """ERA with ``train.compile = true`` under TORCH_LOGS=recompiles: recompiles counted."""
    sz = ctx.sz
    cfg = write_config(ctx.work / "compile.toml", "cifar10", sz.compile_arch,
                       {"loss": "era", "batch_size": sz.batch, "amp": "bf16", "channels_last": True,
                        "compile": True}, {"eps": EPS, "steps": sz.pgd_steps, "era_inner": "targeted"},
                       root=ctx.data, val_fraction=sz.val_fraction)
    run = ctx.work / "compile"
    extra = {"TORCH_LOGS": "recompiles,dynamo"}   # dynamo: one "start tracing" line per compiled frame
    if not ctx.cuda:
        extra["ABSTAIN_COMPILE_BACKEND"] = "eager"   # the dry run: dynamo's guards, no C++ build
    r = abstain(["train", "--config", cfg, "--out", run, "--device", ctx.device], 0, **extra)
    lines = r.stderr.splitlines()
    recompiles = [ln for ln in lines if "Recompiling function" in ln]
    frames = [ln for ln in lines if "torchdynamo start tracing" in ln]
    limit = [ln for ln in lines if "cache_size_limit" in ln or "recompile_limit" in ln]
    rec.update(model=sz.compile_arch, backend=extra.get("ABSTAIN_COMPILE_BACKEND", "inductor"),
               compiled_frames=len(frames), recompiles=len(recompiles), recompile_lines=recompiles[:10],
               limit_lines=limit[:5],
               epoch_seconds_with_compile=train_log(run)["seconds"], finite=finite_weights(run))
    rec["ok"] = rec["finite"] and len(frames) >= 1 and not recompiles and not limit


def run_json(script: str, args: list[Any], in_process: bool = False) -> dict[str, Any]:
    """``python bench/SCRIPT ARGS``; its JSON output. ``in_process``: run it here (the dry run:
    no start-up cost; the script may change torch's thread count)."""
    if in_process:
        import io
        import runpy
        from contextlib import redirect_stdout

        buf, argv = io.StringIO(), sys.argv
        sys.argv = [script, *map(str, args)]
        try:
            with redirect_stdout(buf):
                runpy.run_path(str(ROOT / "bench" / script), run_name="__main__")
        finally:
            sys.argv = argv
        text = buf.getvalue()
        return json.loads(text[text.index("{"):])
    cmd = [sys.executable, str(ROOT / "bench" / script), *map(str, args)]
    r = run_child(cmd, env())
    if r.returncode != 0:
        raise RuntimeError(f"bench/{script} exited {r.returncode}:\n{r.stderr[-2500:]}")
    return json.loads(r.stdout[r.stdout.index("{"):])


def step_bench(ctx: Ctx, rec: dict[str, Any]) -> None:
    dev = ["--device", ctx.device]
    if ctx.sz.bench:
        train = run_json("train.py", ["--model", "wrn-28-10", "--batch", 128, "--steps", 10, "--repeats", 3,
                                      "--amp-speedup", "--channels-last", *dev])
        cert = run_json("certify.py", ["--only", "resnet110", "--repeats", 3, "--inputs", 50, *dev])
    else:
        train = run_json("train.py", ["--model", "cnn", "--batch", 16, "--steps", 2, "--repeats", 1,
                                      "--amp-speedup", *dev], in_process=True)
        cert = run_json("certify.py", ["--only", "cnn", "--repeats", 1, "--cnn-batches", 2, "--inputs", 5,
                                       "--threads", 1, *dev], in_process=True)
    keys = ("device", "trades_step_vs_floor", "era_step_vs_floor", "amp_speedup")
    rec["train"] = {k: train.get(k) for k in (*keys, "model", "batch", "train_pass_s", "trades_step_s",
                                                "era_step_s")}
    rec["certify"] = {k: cert.get(k) for k in ("device", "certify_vs_floor", "throughput")}
    if ctx.sz.bench:
        rec["attacks"] = run_json("attacks.py", [*dev, "--repeats", 1])
        rec["scale"] = run_json("scale.py", ["--gpu-only", "--quick", *dev])
    else:
        rec["skipped"] = "bench/attacks.py and bench/scale.py (tiny dry run)"
    rec["ok"] = all(isinstance(train.get(k), (int, float)) for k in keys[1:])


NEEDED = ("torch", "numpy", "scipy", "sklearn", "safetensors", "tqdm", "kornia")


def preflight(device: str, tiny: bool) -> str | None:
    """Why the check cannot run here (a missing package, no GPU), or None."""
    import importlib

    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        return f"--device {device} but torch {torch.__version__} sees no GPU"
    missing = []
    for name in NEEDED + (() if tiny else ("torchattacks",)):   # bench/attacks.py's reference
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - report every missing dependency at once
            missing.append(f"{name} ({type(e).__name__}: {e})")
    if missing:
        return ("missing Python packages: " + "; ".join(missing) + ". Bring kornia and kornia-rs "
                "(and torchattacks) with tools/gpu_check.sh --wheels DIR (see --prepare-wheels); "
                "the others come with GPU images of PyTorch, or pip")
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (the CPU dry run)")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "out" / "gpu-check"))
    ap.add_argument("--only", nargs="+", default=None, help="run only these steps")
    ap.add_argument("--work", default=None,
                    help="folder for the data and runs (default: a temporary one, deleted at the end; "
                         "never under --out, which should hold only the summary)")
    args = ap.parse_args(argv)
    why_not = preflight(args.device, args.tiny)
    if why_not:
        print(f"gpu_check: {why_not}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="abstain-gpu-check-"))
    try:
        return run_steps(args, out, work)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


def run_steps(args: argparse.Namespace, out: Path, work: Path) -> int:
    """Every step of the check in order; 0 when all passed."""
    import torch

    sz = TINY if args.tiny else FULL
    ctx = Ctx(sz, args.device, work, write_fake_cifar10(work / "data", sz.n_train, sz.n_test))
    cuda = ctx.cuda and torch.cuda.is_available()
    report = Report(out / "gpu_check.json", {
        "device": torch.cuda.get_device_name(0) if cuda else f"cpu ({platform.machine()})",
        "torch": torch.__version__, "python": platform.python_version(), "tiny": args.tiny,
        "sizes": sz.__dict__, "data": f"random CIFAR-10 pickles, {sz.n_train} train / {sz.n_test} test",
        "floors_h100": FLOORS, "floors_note": "vs_h100_floor = measured / floor (goal <= 1.2); "
        "the floors are H100 figures and scale with the passes, steps and N of each step; "
        "in the tiny dry run the models are not those of the floors, so the ratios mean nothing"})
    steps = {"train_era_bf16": None, "train_trades_fp16": None, "evaluate": None, "certify": None,
             "ddp": None, "cpu_vs_cuda": None, "compile": None, "bench": None}
    wanted = set(args.only or steps)
    runs: dict[str, Path] = {}
    if "train_era_bf16" in wanted or "evaluate" in wanted:
        with report.step("train_era_bf16") as rec:
            runs["era"] = step_train(ctx, rec, "train_era_bf16", "era", "bf16")
    if "train_trades_fp16" in wanted:
        with report.step("train_trades_fp16") as rec:
            step_train_fp16(ctx, rec)
    if "evaluate" in wanted:
        with report.step("evaluate") as rec:
            step_evaluate(ctx, rec, runs["era"])
    if wanted & {"certify", "ddp"}:
        with report.step("train_noise") as rec:
            runs["noise"] = train_noise_model(ctx)
    if "certify" in wanted:
        with report.step("certify") as rec:
            step_certify(ctx, rec, runs["noise"])
    if "ddp" in wanted:
        with report.step("ddp") as rec:
            step_ddp(ctx, rec, runs["noise"])
    for name, fn in (("cpu_vs_cuda", step_cpu_vs_cuda), ("compile", step_compile), ("bench", step_bench)):
        if name in wanted:
            with report.step(name) as rec:
                fn(ctx, rec)
    report.write()
    print(json.dumps({k: v.get("ok") for k, v in report.data["steps"].items()}, indent=1))
    return 0 if report.data["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
