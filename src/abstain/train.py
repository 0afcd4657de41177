"""The training loop: from scratch and fine-tuning, with the paper's schedules (Appendix A.2).

:func:`fit` trains a model with one of the losses of :mod:`abstain.losses` by SGD with
momentum, checkpoints into ``out`` after every epoch, resumes from there, selects the
best epoch on a validation split (carved from the training data by the caller; never
the test set) and returns that model in eval mode.

Determinism and resume. Every random choice is derived from ``(seed, epoch, batch,
rank)``: the data order of epoch e is ``randperm(n)`` under a generator seeded with
``(seed, e)`` (the same on every rank, like ``DistributedSampler``), and each batch seeds
the attack/augmentation generator afresh. A checkpoint therefore only needs the model,
optimizer, epoch/batch position and the best-so-far state, and a resumed run reaches the
SAME weights as an uninterrupted one (bitwise on CPU), also after a SIGINT mid-epoch.
torch/NumPy/Python RNG states are saved and restored as well (for user code relying on
them).

Distributed (``torchrun``): ``batch_size`` is the GLOBAL batch; the batch of step b is
``perm[b·B:(b+1)·B]`` and rank r takes every world-th sample of it. Each rank's mean loss is
scaled by ``n_local·world / n_batch`` so that DDP's gradient average equals the gradient of
the global batch mean: 2 processes reach the weights of one process with the whole batch
(up to float summation order; BatchNorm statistics are per rank unless ``sync_bn``). The
checkpoint holds no per-rank state, so a run can resume with another world size. Only
rank 0 writes files.

Run directory (``out``): ``model.safetensors`` + ``meta.json`` = the best model so far
(readable by :func:`abstain.checkpoint.load_checkpoint`), ``train_state.pt`` = last weights,
best weights, optimizer, position, RNG states; ``log.jsonl`` = one line per epoch (each
loss term, lr, validation natural accuracy and PGD robust accuracy / inaccuracy, seconds).
"""
from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from . import distributed as dist_utils
from .checkpoint import (META_FILE, STATE_FILE, load_state_into, load_train_state, save_checkpoint)
from .errors import CheckpointError, ConfigError
from .io import atomic_write_text
from .utils import progress, resolve_device

LOG_FILE = "log.jsonl"
SCHEDULES = ("scratch", "finetune", "synthetic", "constant")
# lr multipliers once a fraction of the epochs is completed (Appendix A.2)
MILESTONES: dict[str, tuple[tuple[float, float], ...]] = {
    "scratch": ((0.75, 0.1), (0.9, 0.01)),
    "finetune": ((0.75, 0.1),),
    "synthetic": (),
    "constant": (),
}
ROBUST_SELECT = {"pgd-at": "rob_acc", "trades": "rob_acc", "era": "rob_acc-rob_inacc",
                 "dga": "rob_acc-rob_inacc"}
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_STATE_VERSION = 1


class TrainingInterrupted(KeyboardInterrupt):
    """Raised after a clean stop on SIGINT; the checkpoint in ``out`` is complete."""


def lr_at(schedule: str, epoch: int, epochs: int, lr: float) -> float:
    """Learning rate of (0-based) ``epoch``: ``lr`` times the factor of every milestone
    fraction already completed (scratch: ×0.1 at 75%, ×0.01 at 90%; finetune: ×0.1 at 75%)."""
    if schedule not in MILESTONES:
        raise ConfigError(f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
    factor = 1.0
    for frac, f in MILESTONES[schedule]:
        if epoch >= frac * epochs:
            factor = f
    return lr * factor


def _mix(*ints: int) -> int:
    """A 63-bit seed from integers (SeedSequence hashing: nearby tuples give unrelated seeds)."""
    state = np.random.SeedSequence([int(i) & 0xFFFFFFFF for i in ints]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The data order of ``epoch``: identical on every rank and after a resume."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(_mix(seed, epoch, 0x0D474)))


# --------------------------------------------------------------------------- rng states
def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    np.random.set_state(("MT19937", npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["cached_gaussian"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(state["cuda"])
        except (RuntimeError, IndexError):
            pass  # resumed on another number of GPUs


# --------------------------------------------------------------------------- validation
@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(dim=1)


def validation_metrics(model: nn.Module, data: Any, *, eps: float | None, norm: str = "linf",
                       steps: int = 10, batch_size: int = 256, device: torch.device | None = None,
                       seed: int = 0, channels_last: bool = False) -> dict[str, float]:
    """Natural accuracy and, when ``eps`` is set, the PGD robustness of the prediction on
    ``data`` (the validation split): ``rob_acc`` = correct and unchanged under a ``steps``-step
    PGD aimed at the model's own prediction (eq. 2), ``rob_inacc`` = wrong and unchanged (eq. 3).

    A cheap training-time proxy of the 40-step APGD evaluation. Under torchrun the samples
    are sharded over ranks and the counts summed, so every rank gets the same numbers.
    """
    from .attacks import pgd

    device = device or next(model.parameters()).device
    was = model.training
    model.eval()
    idx = dist_utils.shard_indices(len(data))
    counts = torch.zeros(4, dtype=torch.float64, device=device)
    gen = torch.Generator(device=device)
    try:
        for b, start in enumerate(range(0, idx.numel(), batch_size)):
            sel = idx[start:start + batch_size]
            x = data.x[sel].to(device)
            y = data.y[sel].to(device)
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            pred = _predict(model, x)
            acc = pred == y
            counts[0] += acc.sum()
            counts[3] += y.numel()
            if eps is not None and eps > 0:
                gen.manual_seed(_mix(seed, b, dist_utils.rank(), 0x7A1))
                with torch.enable_grad():
                    x_adv = pgd(model, x, pred, eps=eps, norm=norm, steps=steps, loss="ce",
                                random_start=True, generator=gen, early_stop=False)
                robust = _predict(model, x_adv) == pred
            else:
                robust = torch.ones_like(acc) if eps == 0 else torch.zeros_like(acc)
            counts[1] += (acc & robust).sum()
            counts[2] += (~acc & robust).sum()
    finally:
        model.train(was)
    if dist_utils.is_distributed():
        torch.distributed.all_reduce(counts)
    n = max(float(counts[3]), 1.0)
    out = {"nat_acc": float(counts[0]) / n}
    if eps is not None:
        out["rob_acc"] = float(counts[1]) / n
        out["rob_inacc"] = float(counts[2]) / n
    return out


def selection_score(select: str, loss: str, metrics: Mapping[str, float]) -> tuple[str, float]:
    """The validation score that picks the best epoch: ``auto`` = natural accuracy for
    standard/noise/cra, robust accuracy for pgd-at/trades, robust accuracy minus robust
    inaccuracy for era/dga (the goal of eq. 4). Higher is better; ties keep the earlier epoch."""
    if select == "auto":
        select = ROBUST_SELECT.get(loss, "nat_acc") if "rob_acc" in metrics else "nat_acc"
    if select == "last":
        return select, 0.0
    if select == "rob_acc-rob_inacc":
        return select, metrics["rob_acc"] - metrics["rob_inacc"]
    if select not in metrics:
        raise ConfigError(f"selection by {select!r} needs the validation PGD (set [loss] eps)")
    return select, metrics[select]


# --------------------------------------------------------------------------- SIGINT
class _StopFlag:
    """SIGINT sets a flag; the loop stops at the next batch boundary. A second SIGINT
    raises KeyboardInterrupt at once."""

    def __init__(self) -> None:
        self.set = False
        self._old: Any = None

    def __enter__(self) -> "_StopFlag":
        if threading.current_thread() is threading.main_thread():
            self._old = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.set:
            raise KeyboardInterrupt
        self.set = True
        print("\nabstain train: SIGINT received; stopping after this batch (Ctrl-C again to "
              "abort without a checkpoint)", file=sys.stderr)

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


# --------------------------------------------------------------------------- helpers
def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _optimizer_state_to(opt: torch.optim.Optimizer, device: torch.device) -> None:
    for st in opt.state.values():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                st[k] = v.to(device)


def _build_augment(augment: Any, input_shape: tuple[int, ...]) -> Callable | None:
    if augment is None or augment == "none":
        return None
    if callable(augment):
        return augment
    try:
        from .data import augment as aug_mod
    except ImportError:
        raise ConfigError(f"augment = {augment!r} needs abstain.data.augment, which is not "
                          "installed; use augment = \"none\"") from None
    return aug_mod.build(augment, input_shape)


def _fit_signature(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items()}


# --------------------------------------------------------------------------- fit
def fit(model: nn.Module, train_data: Any, *, loss: str, loss_params: Mapping[str, Any],
        epochs: int, batch_size: int, lr: float, schedule: str = "constant",
        momentum: float = 0.9, weight_decay: float = 5e-4, val_data: Any = None,
        out: str | os.PathLike | None = None, seed: int = 0, device: str | torch.device = "cpu",
        augment: Any = None, meta: Mapping[str, Any] | None = None, amp: str = "off",
        channels_last: bool = False, compile: bool = False, sync_bn: bool = False,
        select: str = "auto", val_steps: int = 10, desc: str = "train",
        _stop_at: tuple[int, int] | None = None) -> nn.Module:
    """Train ``model`` on ``train_data`` (a dataset with ``.x``/``.y`` tensors) and return the
    epoch that scores best on ``val_data`` (last epoch when ``val_data`` is None), in eval mode.

    ``loss``/``loss_params``: a registered loss (:mod:`abstain.losses`) and its parameters.
    SGD(lr, momentum, weight_decay) with the lr ``schedule`` of :func:`lr_at`. ``batch_size``
    is global (over all torchrun ranks). ``out``: checkpoint directory, written after every
    epoch (rank 0) and resumed from when it holds an unfinished run (a finished run is
    loaded and returned). ``meta`` must then hold ``arch`` and ``num_classes`` (plus
    whatever rebuilds the model: ``model_kwargs``, ``dataset``…). ``augment``: None, a name
    for ``abstain.data.augment.build`` or a callable ``(x, generator) -> x``. ``amp``
    ("off"/"bf16"/"fp16"), ``channels_last``, ``compile`` act on CUDA (AMP only wraps the
    training forward passes; inner attacks run in fp32). ``_stop_at=(epoch, batch)`` (tests)
    behaves as a SIGINT after that batch.
    """
    from . import losses

    # ---- arguments
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ConfigError(f"lr must be > 0, got {lr!r}")
    if schedule not in MILESTONES:
        raise ConfigError(f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
    if amp not in ("off", *AMP_DTYPES):
        raise ConfigError(f"amp must be off, bf16 or fp16, got {amp!r}")
    loss_fn = losses.get(loss)
    params = dict(loss_params)
    out_dir = Path(out) if out is not None else None
    if out_dir is not None and (meta is None or "arch" not in meta or "num_classes" not in meta):
        raise ConfigError("fit(out=...) needs meta with 'arch' and 'num_classes' to write checkpoints")
    if len(train_data) == 0:
        raise ConfigError("the training set is empty")

    device = resolve_device(device)
    distributed = dist_utils.init_from_env(device)
    device = dist_utils.local_device(device)
    world, rank = dist_utils.world_size(), dist_utils.rank()
    if batch_size < world:
        raise ConfigError(f"batch_size {batch_size} is smaller than the number of processes {world}")
    main = dist_utils.is_main()
    cuda = device.type == "cuda"
    if amp != "off" and not cuda:
        warnings.warn(f"amp = {amp!r} is only used on CUDA; training in fp32 on {device.type}")
    amp_on = amp != "off" and cuda
    channels_last = channels_last and cuda

    raw = model.to(device)
    if channels_last:
        raw = raw.to(memory_format=torch.channels_last)
    if sync_bn and distributed:
        raw = nn.SyncBatchNorm.convert_sync_batchnorm(raw)
    optimizer = torch.optim.SGD(raw.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_on and amp == "fp16")

    signature = _fit_signature(loss=loss, loss_params={k: v for k, v in params.items()
                                                        if isinstance(v, (int, float, str, bool))},
                               epochs=epochs, batch_size=batch_size, lr=float(lr), schedule=schedule,
                               momentum=float(momentum), weight_decay=float(weight_decay), seed=seed,
                               n_train=len(train_data), n_val=len(val_data) if val_data is not None else 0)
    eps = params.get("eps")
    val_eps = float(eps) if eps is not None else None
    select_name, _ = selection_score(select, loss, {"nat_acc": 0.0, **(
        {"rob_acc": 0.0, "rob_inacc": 0.0} if val_eps is not None and val_data is not None else {})})

    # ---- resume
    start_epoch, start_batch = 0, 0
    best: dict[str, Any] = {"epoch": 0, "score": -math.inf, "metrics": {}, "state": None}
    acc_sums: dict[str, float] = {}
    acc_n = 0
    seconds_before = 0.0
    state = load_train_state(out_dir) if out_dir is not None else None
    if state is not None:
        if state.get("version") != _STATE_VERSION or "signature" not in state:
            raise CheckpointError(f"{out_dir / STATE_FILE} was not written by this trainer")
        old = state["signature"]
        changed = sorted(k for k in set(old) | set(signature) if old.get(k) != signature.get(k))
        if changed:
            raise CheckpointError(
                f"cannot resume {out_dir}: the training settings differ from the checkpoint's "
                f"({', '.join(f'{k}: {old.get(k)!r} -> {signature.get(k)!r}' for k in changed)}); "
                "use a new output directory or overwrite")
        best = {"epoch": state["best_epoch"], "score": state["best_score"],
                "metrics": dict(state["best_metrics"]), "state": state.get("model_best")}
        if state.get("finished"):
            load_state_into(raw, best["state"] if best["state"] is not None else state["model_last"],
                            source=str(out_dir))
            return raw.eval()
        load_state_into(raw, state["model_last"], source=str(out_dir))
        optimizer.load_state_dict(state["optimizer"])
        _optimizer_state_to(optimizer, device)
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, start_batch = int(state["epoch"]), int(state["batch"])
        acc_sums = {k: float(v) for k, v in state["epoch_sums"].items()}
        acc_n = int(state["epoch_n"])
        seconds_before = float(state.get("seconds", 0.0))
        _set_rng_state(state["rng"])
        if main:
            print(f"{desc}: resuming {out_dir} at epoch {start_epoch + 1}"
                  + (f", batch {start_batch + 1}" if start_batch else ""), file=sys.stderr)

    # ---- wrappers
    train_model: nn.Module = raw
    if compile and cuda:
        train_model = torch.compile(train_model)
    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(train_model, device_ids=[device.index] if cuda else None)
    augment_fn = _build_augment(augment, tuple(train_data.x.shape[1:]))

    x_all, y_all = train_data.x, train_data.y
    if cuda:
        x_all, y_all = x_all.pin_memory(), y_all.pin_memory()
    n = len(train_data)
    n_batches = math.ceil(n / batch_size)
    gen = torch.Generator(device=device)
    t_start = time.perf_counter()

    def save(epoch: int, batch: int, sums: Mapping[str, float], count: int, finished: bool) -> None:
        if out_dir is None or not main:
            return
        best_state = best["state"] if best["state"] is not None else _cpu_state(raw)
        m = dict(meta or {})
        m.update({"epoch": best["epoch"], "metrics": best["metrics"], "selection": select_name,
                  "train": {**signature, "epochs_done": epoch, "finished": finished}})
        train_state = {
            "version": _STATE_VERSION, "signature": signature, "epoch": epoch, "batch": batch,
            "epoch_sums": dict(sums), "epoch_n": count, "finished": finished,
            "model_last": _cpu_state(raw), "model_best": best["state"],
            "best_epoch": best["epoch"], "best_score": best["score"], "best_metrics": best["metrics"],
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            "scheduler": {"schedule": schedule, "base_lr": float(lr), "epochs": epochs},
            "data_order": {"seed": seed, "scheme": "randperm per epoch, generator seeded (seed, epoch)"},
            "rng": _rng_state(), "world_size": world,
            "seconds": seconds_before + time.perf_counter() - t_start,
        }
        save_checkpoint(out_dir, best_state, m, train_state)

    if out_dir is not None and main:
        _truncate_log(out_dir / LOG_FILE, start_epoch)

    stop = _StopFlag()
    with stop:
        epoch_bar = progress(range(start_epoch, epochs), total=epochs, initial=start_epoch,
                             desc=desc, leave=False, disable=None if main else True)
        for epoch in epoch_bar:
            lr_now = lr_at(schedule, epoch, epochs, lr)
            for group in optimizer.param_groups:
                group["lr"] = lr_now
            order = epoch_order(n, seed, epoch)
            train_model.train()
            sums_t: dict[str, torch.Tensor] = {}
            first = start_batch if epoch == start_epoch else 0
            if epoch != start_epoch:
                acc_sums, acc_n = {}, 0
            t_epoch = time.perf_counter()
            bar = progress(range(first, n_batches), total=n_batches, initial=first,
                           desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                           disable=None if main else True)
            for b in bar:
                idx = order[b * batch_size:(b + 1) * batch_size]
                if idx.numel() < world:
                    continue  # a final batch too small to give every rank a sample
                local = idx[rank::world]
                x = x_all[local].to(device, non_blocking=True)
                y = y_all[local].to(device, non_blocking=True)
                gen.manual_seed(_mix(seed, epoch, b, rank))
                if augment_fn is not None:
                    x = augment_fn(x, gen)
                if channels_last and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                params["generator"] = gen
                with torch.autocast(device_type=device.type, dtype=AMP_DTYPES.get(amp, torch.float32),
                                    enabled=amp_on):
                    loss_value, parts = loss_fn(train_model, x, y, params)
                scale = local.numel() * world / idx.numel()
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss_value * scale).backward()
                scaler.step(optimizer)
                scaler.update()
                k = float(local.numel())
                for name, v in {"loss": loss_value, **parts}.items():
                    v = torch.as_tensor(v, device=device).detach().float() * k
                    sums_t[name] = sums_t[name] + v if name in sums_t else v
                acc_n += local.numel()
                if b % 10 == 0 and main:
                    bar.set_postfix(loss=f"{float(loss_value.detach()):.4f}")
                stop_now = stop.set or (_stop_at is not None and (epoch, b) == tuple(_stop_at))
                if distributed:
                    flag = torch.tensor([1.0 if stop_now else 0.0], device=device)
                    torch.distributed.all_reduce(flag)
                    stop_now = bool(flag.item() > 0)
                if stop_now:
                    sums = _merge_sums(acc_sums, sums_t)
                    save(epoch, b + 1, sums, acc_n, finished=False)
                    bar.close()
                    where = f"epoch {epoch + 1}, batch {b + 1}/{n_batches}"
                    msg = (f"training stopped at {where}; the checkpoint in {out_dir} holds that "
                           "position: rerun the same command to continue (abstain train: add --resume)"
                           if out_dir is not None else f"training stopped at {where} (no out dir)")
                    if main:
                        print(f"{desc}: {msg}", file=sys.stderr)
                    raise TrainingInterrupted(msg)
            bar.close()
            sums = _merge_sums(acc_sums, sums_t)
            counts = torch.tensor([float(acc_n)], dtype=torch.float64, device=device)
            names = sorted(sums)
            vec = torch.tensor([sums[k] for k in names], dtype=torch.float64, device=device)
            if distributed:
                torch.distributed.all_reduce(counts)
                torch.distributed.all_reduce(vec)
            total = max(float(counts.item()), 1.0)
            epoch_parts = {k: float(v) / total for k, v in zip(names, vec.tolist())}
            record: dict[str, Any] = {"epoch": epoch + 1, "lr": lr_now, **epoch_parts}
            if val_data is not None:
                metrics = validation_metrics(raw, val_data, eps=val_eps, norm=params.get("norm", "linf"),
                                             steps=val_steps, batch_size=max(batch_size, 256),
                                             device=device, seed=_mix(seed, epoch, 0x5A1),
                                             channels_last=channels_last)
                _, score = selection_score(select_name, loss, metrics)
                if select_name == "last" or score > best["score"]:
                    best = {"epoch": epoch + 1, "score": score, "metrics": metrics,
                            "state": _cpu_state(raw)}
                record.update({f"val_{k}": v for k, v in metrics.items()})
                record["val_score"] = score
            else:
                best = {"epoch": epoch + 1, "score": 0.0, "metrics": {}, "state": _cpu_state(raw)}
            record["best_epoch"] = best["epoch"]
            record["seconds"] = time.perf_counter() - t_epoch
            acc_sums, acc_n = {}, 0
            save(epoch + 1, 0, {}, 0, finished=epoch + 1 == epochs)
            if out_dir is not None and main:
                _append_log(out_dir / LOG_FILE, record)
            if main:
                epoch_bar.set_postfix({k: f"{v:.3f}" for k, v in record.items()
                                       if k in ("loss", "val_nat_acc", "val_rob_acc")})
        epoch_bar.close()
    if best["state"] is not None:
        load_state_into(raw, best["state"], source="best epoch")
    dist_utils.barrier()
    return raw.eval()


def _merge_sums(base: Mapping[str, float], sums_t: Mapping[str, torch.Tensor]) -> dict[str, float]:
    out = dict(base)
    for k, v in sums_t.items():
        out[k] = out.get(k, 0.0) + float(v)
    return out


def _truncate_log(path: Path, epochs_done: int) -> None:
    """Keep the log lines of the epochs a resumed run has already completed."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("epoch", 0) <= epochs_done:
                keep.append(line)
        except json.JSONDecodeError:
            continue
    atomic_write_text(path, "".join(f"{line}\n" for line in keep))


def _append_log(path: Path, record: Mapping[str, Any]) -> None:
    old = path.read_text() if path.is_file() else ""
    atomic_write_text(path, old + json.dumps(record, sort_keys=True) + "\n")


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The epoch records of a run's ``log.jsonl`` (or of a run directory)."""
    p = Path(path)
    if p.is_dir():
        p = p / LOG_FILE
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def is_finished(out: str | os.PathLike) -> bool:
    """Whether ``out`` holds a finished training run."""
    state = load_train_state(out) if (Path(out) / META_FILE).is_file() else None
    return bool(state and state.get("finished"))


# --------------------------------------------------------------------------- from a config
def _model_kwargs(arch: str, input_shape: tuple[int, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Fill the input geometry of the small models from the data (recorded in meta.json)."""
    kw = dict(kwargs)
    if arch == "mlp" and "in_features" not in kw:
        kw["in_features"] = int(np.prod(input_shape))
    if arch == "cnn" and len(input_shape) == 3:
        kw.setdefault("in_channels", int(input_shape[0]))
        kw.setdefault("input_size", int(input_shape[1]))
    return kw


def build_model(cfg: Mapping[str, Mapping[str, Any]], num_classes: int,
                input_shape: tuple[int, ...]) -> tuple[nn.Module, dict[str, Any]]:
    """The model of ``[model]``, initialised from ``init`` when given: a checkpoint
    directory of this project (same arch) or a foreign weights file (published layouts of
    RobustBench / Cohen et al. are mapped by :func:`abstain.models.published.load_published`)."""
    from . import models
    from .checkpoint import MODEL_FILE, load_weights_file, read_meta

    arch = cfg["model"]["arch"]
    kw = _model_kwargs(arch, input_shape, cfg["model"]["kwargs"])
    init = cfg["model"]["init"]
    if init:
        path = Path(init)
        if path.is_dir():
            meta = read_meta(path)
            if meta["arch"] != arch or int(meta["num_classes"]) != num_classes:
                raise ConfigError(f"[model] init {path} holds a {meta['arch']!r} model with "
                                  f"{meta['num_classes']} classes, not {arch!r} with {num_classes}")
            kw = {**dict(meta.get("model_kwargs", {})), **dict(cfg["model"]["kwargs"])}
            model = models.create(arch, num_classes, **kw)
            load_state_into(model, load_weights_file(path / MODEL_FILE), source=str(path))
            return model, kw
        if not path.is_file():
            raise ConfigError(f"[model] init: no such checkpoint directory or file: {path}")
        from .models import published

        if arch in published.PUBLISHED:
            mean, std = kw.pop("mean", None), kw.pop("std", None)
            if kw:
                raise ConfigError(f"[model] kwargs {sorted(kw)} cannot be combined with a published "
                                  f"{arch!r} checkpoint (only mean/std)")
            return published.load_published(arch, path, num_classes, mean=mean, std=std,
                                             return_kwargs=True)
        from .checkpoint import load_foreign_state_dict

        model = models.create(arch, num_classes, **kw)
        load_state_into(model, load_foreign_state_dict(path), source=str(path))
        return model, kw
    return models.create(arch, num_classes, **kw), kw


def train_from_config(cfg: Mapping[str, Mapping[str, Any]], out: str | os.PathLike | None,
                      device: str | torch.device = "auto") -> tuple[nn.Module, dict[str, Any]]:
    """Run the experiment of a validated config (:func:`abstain.config.validate`): load the
    training split, carve the validation split (``val_fraction``, seeded), build/initialise
    the model and :func:`fit` it into ``out``. Returns ``(model, summary)``; the summary is
    the ``"train"`` section of ``results.json``."""
    from . import data as data_mod
    from .config import loss_params
    from .data import train_val_split

    d, tr = cfg["data"], cfg["train"]
    full = data_mod.load(d["name"], "train", root=d["root"], seed=tr["seed"])
    tr_idx, va_idx = train_val_split(len(full), d["val_fraction"], seed=tr["seed"])
    train_ds = full.subset(tr_idx)
    val_ds = full.subset(va_idx) if va_idx.numel() else None
    # The initial weights depend only on the seed (not on torch's per-process random seed or
    # on what ran before in the process): same config, same weights; a run killed before its
    # first checkpoint restarts from the same initialisation. The global RNG is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_mix(tr["seed"], 0x1417))
        model, kw = build_model(cfg, full.num_classes, tuple(full.input_shape))
    meta = {"arch": cfg["model"]["arch"], "num_classes": full.num_classes, "dataset": d["name"],
            "data_root": d["root"], "model_kwargs": kw, "input_shape": list(full.input_shape),
            "config": json.loads(json.dumps(cfg)), "val_fraction": d["val_fraction"],
            "n_train": len(train_ds), "n_val": len(val_ds) if val_ds is not None else 0}
    t0 = time.perf_counter()
    model = fit(model, train_ds, loss=tr["loss"], loss_params=loss_params(cfg), epochs=tr["epochs"],
                batch_size=tr["batch_size"], lr=tr["lr"], schedule=tr["schedule"],
                momentum=tr["momentum"], weight_decay=tr["weight_decay"], val_data=val_ds, out=out,
                seed=tr["seed"], device=device, augment=d["augment"], meta=meta, amp=tr["amp"],
                channels_last=tr["channels_last"], compile=tr["compile"], sync_bn=tr["sync_bn"],
                select=tr["select"], val_steps=tr["val_steps"])
    summary: dict[str, Any] = {"loss": tr["loss"], "epochs": tr["epochs"],
                               "seconds_this_call": time.perf_counter() - t0,
                               "n_train": len(train_ds), "n_val": meta["n_val"]}
    if out is not None:
        from .checkpoint import read_meta

        m = read_meta(out)
        summary.update({"best_epoch": m.get("epoch"), "selection": m.get("selection"),
                        **{f"val_{k}": v for k, v in m.get("metrics", {}).items()}})
    return model, summary


__all__ = ["fit", "train_from_config", "build_model", "lr_at", "validation_metrics", "selection_score", "epoch_order", "read_log",
           "is_finished", "TrainingInterrupted", "SCHEDULES", "MILESTONES"]
