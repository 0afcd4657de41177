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

import math
import os
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .. import distributed as dist_utils
from .. import losses
from .. import config as config_mod   # a module object: config imports train.schedule
from ..checkpoint import STATE_FILE, load_state_into, load_train_state, save_checkpoint
from ..data import augment as aug_mod
from ..errors import CheckpointError, ConfigError
from ..utils import progress, resolve_device
from .feed import BatchFeed
from ..seeds import derive
from .schedule import epoch_order, lr_at
from .select import selection_score, validation_metrics
from .state import (LOG_FILE, STATE_VERSION, StopFlag, TrainingDiverged, TrainingInterrupted, append_log,
                    cpu_state, merge_sums, optimizer_state_to, rng_state, set_rng_state, truncate_log)

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
COMPILE_BACKEND_ENV = "ABSTAIN_COMPILE_BACKEND"   # torch.compile backend (default inductor)
ShouldStop = Callable[[int, int], bool]


def _build_augment(augment: Any, input_shape: tuple[int, ...]) -> Callable | None:
    if augment is None or augment == "none":
        return None
    if callable(augment):
        return augment
    return aug_mod.build(augment, input_shape)


@contextmanager
def _cudnn_benchmark(cuda: bool) -> Iterator[None]:
    """cuDNN's benchmark mode while training on CUDA, restored afterwards.

    Training's batch shapes are fixed, so timing the convolution algorithms once pays off;
    but another run may then pick another algorithm (last-bit differences), so it is not
    left on for the evaluation or certification that may follow in the same process, nor
    turned on when the user asked for deterministic algorithms."""
    before = torch.backends.cudnn.benchmark
    if cuda and not torch.are_deterministic_algorithms_enabled():
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


class Trainer:
    """One call of :func:`fit`: the model, optimizer and position, and the best epoch so far."""

    def __init__(self, model: nn.Module, train_data: Any, val_data: Any, s: "config_mod.TrainSettings",
                 loss: "config_mod.LossSettings", out_dir: Path | None, meta: Mapping[str, Any] | None, device: Any,
                 augment: Any, desc: str) -> None:
        self.s, self.out_dir, self.meta = s, out_dir, meta
        self.augment, self.desc = augment, desc
        self.train_data, self.val_data = train_data, val_data
        self.loss_fn = losses.get(s.loss)
        self.params = loss.params()
        device = resolve_device(device)
        self.distributed = dist_utils.init_from_env(device)
        self.device = dist_utils.local_device(device)
        self.world, self.rank = dist_utils.world_size(), dist_utils.rank()
        if s.batch_size < self.world:
            raise ConfigError(f"batch_size {s.batch_size} is smaller than the number of processes "
                              f"{self.world}")
        self.main = dist_utils.is_main()
        self.cuda = self.device.type == "cuda"
        if s.amp != "off" and not self.cuda:
            warnings.warn(f"amp = {s.amp!r} is only used on CUDA; training in fp32 on {self.device.type}")
        self.amp_on = s.amp != "off" and self.cuda
        self.channels_last = s.channels_last and self.cuda
        self._build_model(model)
        self.signature = {
            "loss": s.loss, "loss_params": {k: v for k, v in self.params.items()
                                            if isinstance(v, (int, float, str, bool))},
            "epochs": s.epochs, "batch_size": s.batch_size, "lr": float(s.lr), "schedule": s.schedule,
            "momentum": float(s.momentum), "weight_decay": float(s.weight_decay), "seed": s.seed,
            "n_train": len(train_data), "n_val": len(val_data) if val_data is not None else 0}
        eps = self.params.get("eps")
        self.val_eps = float(eps) if eps is not None else None
        self.select_name, _ = selection_score(s.select, s.loss, {"nat_acc": 0.0, **(
            {"rob_acc": 0.0, "rob_inacc": 0.0} if self.val_eps is not None and val_data is not None
            else {})})
        self.start_epoch = self.start_batch = 0
        self.best: dict[str, Any] = {"epoch": 0, "score": -math.inf, "metrics": {}, "state": None}
        self.acc_sums: dict[str, float] = {}
        self.acc_n = 0
        self.seconds_before = 0.0
        self.t_start = time.perf_counter()

    def _build_model(self, model: nn.Module) -> None:
        raw = model.to(self.device)
        if self.channels_last:
            raw = raw.to(memory_format=torch.channels_last)
        if self.s.sync_bn and self.distributed:
            raw = nn.SyncBatchNorm.convert_sync_batchnorm(raw)
        self.raw = raw
        self.optimizer = torch.optim.SGD(raw.parameters(), lr=self.s.lr, momentum=self.s.momentum,
                                         weight_decay=self.s.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_on and self.s.amp == "fp16")

    # ---------------------------------------------------------------- resume / save
    def resume(self) -> bool:
        """Continue from the checkpoint in ``out`` if there is one; True when that run had
        already finished (``self.raw`` then holds its best model)."""
        out_dir = self.out_dir
        state = load_train_state(out_dir) if out_dir is not None else None
        if state is None:
            return False
        if state.get("version") != STATE_VERSION or "signature" not in state:
            raise CheckpointError(f"{out_dir / STATE_FILE} was not written by this trainer")
        old, new = state["signature"], self.signature
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if changed:
            raise CheckpointError(
                f"cannot resume {out_dir}: the training settings differ from the checkpoint's "
                f"({', '.join(f'{k}: {old.get(k)!r} -> {new.get(k)!r}' for k in changed)}); "
                "use a new output directory or overwrite")
        self.best = {"epoch": state["best_epoch"], "score": state["best_score"],
                     "metrics": dict(state["best_metrics"]), "state": state.get("model_best")}
        if state.get("finished"):
            load_state_into(self.raw, self.best["state"] if self.best["state"] is not None
                            else state["model_last"], source=str(out_dir))
            return True
        load_state_into(self.raw, state["model_last"], source=str(out_dir))
        self.optimizer.load_state_dict(state["optimizer"])
        optimizer_state_to(self.optimizer, self.device)
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.start_epoch, self.start_batch = int(state["epoch"]), int(state["batch"])
        self.acc_sums = {k: float(v) for k, v in state["epoch_sums"].items()}
        self.acc_n = int(state["epoch_n"])
        self.seconds_before = float(state.get("seconds", 0.0))
        set_rng_state(state["rng"])
        if self.main:
            print(f"{self.desc}: resuming {out_dir} at epoch {self.start_epoch + 1}"
                  + (f", batch {self.start_batch + 1}" if self.start_batch else ""), file=sys.stderr)
        return False

    def save(self, epoch: int, batch: int, sums: Mapping[str, float], count: int, finished: bool) -> None:
        if self.out_dir is None or not self.main:
            return
        s, best = self.s, self.best
        best_state = best["state"] if best["state"] is not None else cpu_state(self.raw)
        m = dict(self.meta or {})
        m.update({"epoch": best["epoch"], "metrics": best["metrics"], "selection": self.select_name,
                  "train": {**self.signature, "epochs_done": epoch, "finished": finished}})
        train_state = {
            "version": STATE_VERSION, "signature": self.signature, "epoch": epoch, "batch": batch,
            "epoch_sums": dict(sums), "epoch_n": count, "finished": finished,
            "model_last": cpu_state(self.raw), "model_best": best["state"],
            "best_epoch": best["epoch"], "best_score": best["score"], "best_metrics": best["metrics"],
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "scheduler": {"schedule": s.schedule, "base_lr": float(s.lr), "epochs": s.epochs},
            "data_order": {"seed": s.seed, "scheme": "randperm per epoch, generator seeded (seed, epoch)"},
            "rng": rng_state(), "world_size": self.world,
            "seconds": self.seconds_before + time.perf_counter() - self.t_start,
        }
        save_checkpoint(self.out_dir, best_state, m, train_state)

    # ---------------------------------------------------------------- one epoch
    def wrap(self) -> None:
        """The module the batches run through (DDP, then compiled) and the training data."""
        model: nn.Module = self.raw
        if self.distributed:
            model = DistributedDataParallel(model, device_ids=[self.device.index] if self.cuda else None)
        if self.s.compile:
            # DDP inside the compiled module: dynamo's DDP optimizer splits the graph at the
            # gradient buckets and keeps the all-reduce overlapping the backward (a compiled
            # module inside DDP loses that overlap). Attacks and clean targets bypass the
            # compiled module (losses.adversarial.attack_view): one graph, no recompiles.
            model = torch.compile(model, backend=os.environ.get(COMPILE_BACKEND_ENV, "inductor"))
        self.train_model = model
        self.augment_fn = _build_augment(self.augment, tuple(self.train_data.x.shape[1:]))
        self.feed = BatchFeed(self.train_data.x, self.train_data.y, self.device,
                              math.ceil(self.s.batch_size / self.world))
        self.n_batches = math.ceil(len(self.train_data) / self.s.batch_size)
        self.gen = torch.Generator(device=self.device)
        # augmentation seeds come from a CPU generator on CUDA: a seed drawn from a CUDA
        # generator must be read back by the host, a device sync per batch (on CPU the loss's
        # generator serves, as it always did: bitwise the same runs)
        self.aug_gen = torch.Generator() if self.cuda else self.gen
        self.seed_gen = torch.Generator() if self.cuda else None   # the attacks' start seeds, ditto

    def step(self, epoch: int, b: int, order: torch.Tensor, sums_t: dict[str, torch.Tensor]) -> Any:
        """One optimizer step on batch ``b`` of ``epoch``; adds each loss term to ``sums_t``.
        Returns the loss, or None for a final batch too small to give every rank a sample."""
        s, device = self.s, self.device
        n_batch = min(len(order), (b + 1) * s.batch_size) - b * s.batch_size
        if n_batch < self.world:
            return None
        n_local = len(range(self.rank, n_batch, self.world))
        x, y = self.feed(b * s.batch_size, b * s.batch_size + n_batch, self.rank, self.world)
        self.gen.manual_seed(derive(s.seed, epoch, b, self.rank))
        if self.augment_fn is not None:
            if self.aug_gen is not self.gen:
                self.aug_gen.manual_seed(derive(s.seed, epoch, b, self.rank, 0xA06))
            x = self.augment_fn(x, self.aug_gen)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        # the loss draws its attack starts and noise from this per-(seed, epoch, batch, rank)
        # generator, never from the global RNG (seeded alike on every rank)
        self.params["generator"] = self.gen
        if self.seed_gen is not None:
            self.seed_gen.manual_seed(derive(s.seed, epoch, b, self.rank, 0x5EED))
            self.params["seed_generator"] = self.seed_gen
        self.params["epoch"] = epoch
        with torch.autocast(device_type=device.type, dtype=AMP_DTYPES.get(s.amp, torch.float32),
                            enabled=self.amp_on):
            loss_value, parts = self.loss_fn(self.train_model, x, y, self.params)
        scale = n_local * self.world / n_batch
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss_value * scale).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        k = float(n_local)
        for name, v in {"loss": loss_value, **parts}.items():
            v = torch.as_tensor(v, device=device).detach().float() * k
            sums_t[name] = sums_t[name] + v if name in sums_t else v
        self.acc_n += n_local
        return loss_value

    def stop_requested(self, flag: StopFlag, should_stop: ShouldStop | None, epoch: int, b: int) -> bool:
        """Whether any rank was asked to stop after batch ``b`` (SIGINT or ``should_stop``)."""
        stop_now = flag.set or (should_stop is not None and bool(should_stop(epoch, b)))
        return dist_utils.any_rank(stop_now) if self.distributed else stop_now   # host-side, no GPU sync

    def check_finite(self, loss_value: torch.Tensor, first_bad: torch.Tensor, epoch: int, b: int,
                     read: bool) -> torch.Tensor:
        """Track the first batch of the epoch whose loss is NaN/inf on the device (no sync) and,
        when ``read`` (every batch on CPU; every 200th, before a stop and at the epoch's end on
        CUDA), raise :class:`TrainingDiverged` naming it. It is raised before any checkpoint
        of the bad weights is written, so the one on disk is the last good one."""
        bad = ~torch.isfinite(loss_value.detach().float())
        first_bad = torch.where(bad & (first_bad > b), torch.full_like(first_bad, b), first_bad)
        if not read:
            return first_bad
        diverged = int(first_bad) < self.n_batches        # a host read: a GPU sync
        if self.distributed:
            diverged = dist_utils.any_rank(diverged)
        if diverged:
            where = f"epoch {epoch + 1}, batch {min(int(first_bad), b) + 1}/{self.n_batches}"
            kept = (f"the last checkpoint, written before that step, is kept in {self.out_dir}"
                    if self.out_dir is not None and (self.out_dir / STATE_FILE).exists()
                    else "no checkpoint was written")
            raise TrainingDiverged(f"training diverged: the loss is NaN or infinite at {where}; {kept}; "
                                   "lower train.lr (or check the data and the loss settings)")
        return first_bad

    def interrupt(self, epoch: int, b: int, sums_t: Mapping[str, torch.Tensor]) -> TrainingInterrupted:
        """Save the position after batch ``b`` and return the exception that stops the run."""
        self.save(epoch, b + 1, merge_sums(self.acc_sums, sums_t), self.acc_n, finished=False)
        if self.distributed:
            # every rank stops here (stop_requested is agreed by all); the others wait until
            # rank 0 has written the checkpoint, so that no rank tears down the process group,
            # or exits and makes torchrun stop the job, while rank 0 is still writing it
            dist_utils.barrier()
        where = f"epoch {epoch + 1}, batch {b + 1}/{self.n_batches}"
        msg = (f"training stopped at {where}; the checkpoint in {self.out_dir} holds that "
               "position: rerun the same command to continue (abstain train: add --resume)"
               if self.out_dir is not None else f"training stopped at {where} (no out dir)")
        if self.main:
            print(f"{self.desc}: {msg}", file=sys.stderr)
        return TrainingInterrupted(msg)

    def train_epoch(self, epoch: int, flag: StopFlag, should_stop: ShouldStop | None) -> dict[str, float]:
        """Run the batches of ``epoch`` (from the resume position); the epoch's mean loss terms."""
        s = self.s
        lr_now = lr_at(s.schedule, epoch, s.epochs, s.lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr_now
        order = epoch_order(len(self.train_data), s.seed, epoch)
        self.feed.start_epoch(order)
        self.train_model.train()
        sums_t: dict[str, torch.Tensor] = {}
        first = self.start_batch if epoch == self.start_epoch else 0
        if epoch != self.start_epoch:
            self.acc_sums, self.acc_n = {}, 0
        bar = progress(range(first, self.n_batches), total=self.n_batches, initial=first,
                       desc=f"epoch {epoch + 1}/{s.epochs}", leave=False, disable=None if self.main else True)
        first_bad = torch.full((), self.n_batches, device=self.device)   # first non-finite loss
        for b in bar:
            loss_value = self.step(epoch, b, order, sums_t)
            if loss_value is None:
                continue
            if b % (200 if self.cuda else 10) == 0 and self.main:   # float(): a GPU sync
                bar.set_postfix(loss=f"{float(loss_value.detach()):.4f}")
            stop = self.stop_requested(flag, should_stop, epoch, b)
            first_bad = self.check_finite(loss_value, first_bad, epoch, b,
                                          stop or b == self.n_batches - 1 or not self.cuda or b % 200 == 0)
            if stop:
                bar.close()
                raise self.interrupt(epoch, b, sums_t)
        bar.close()
        return self._epoch_means(merge_sums(self.acc_sums, sums_t), lr_now)

    def _epoch_means(self, sums: Mapping[str, float], lr_now: float) -> dict[str, float]:
        counts = torch.tensor([float(self.acc_n)], dtype=torch.float64)
        names = sorted(sums)
        vec = torch.tensor([sums[k] for k in names], dtype=torch.float64)
        if self.distributed:   # host floats: reduced over the host (gloo) group
            torch.distributed.all_reduce(counts, group=dist_utils.host_group())
            torch.distributed.all_reduce(vec, group=dist_utils.host_group())
        total = max(float(counts.item()), 1.0)
        return {"lr": lr_now, **{k: float(v) / total for k, v in zip(names, vec.tolist())}}

    def end_epoch(self, epoch: int, record: dict[str, Any], t_epoch: float) -> dict[str, Any]:
        """Validate, keep the best epoch, checkpoint and log; the epoch's log record."""
        s = self.s
        record = {"epoch": epoch + 1, **record}
        if self.val_data is not None:
            metrics = validation_metrics(self.raw, self.val_data, eps=self.val_eps,
                                         norm=self.params.get("norm", "linf"), steps=s.val_steps,
                                         batch_size=max(s.batch_size, 256), device=self.device,
                                         seed=derive(s.seed, epoch, 0x5A1), channels_last=self.channels_last)
            _, score = selection_score(self.select_name, s.loss, metrics)
            if self.select_name == "last" or score > self.best["score"]:
                self.best = {"epoch": epoch + 1, "score": score, "metrics": metrics,
                             "state": cpu_state(self.raw)}
            record.update({f"val_{k}": v for k, v in metrics.items()})
            record["val_score"] = score
        else:
            self.best = {"epoch": epoch + 1, "score": 0.0, "metrics": {}, "state": cpu_state(self.raw)}
        record["best_epoch"] = self.best["epoch"]
        record["seconds"] = time.perf_counter() - t_epoch
        self.acc_sums, self.acc_n = {}, 0
        self.save(epoch + 1, 0, {}, 0, finished=epoch + 1 == s.epochs)
        if self.out_dir is not None and self.main:
            append_log(self.out_dir / LOG_FILE, record)
        return record

    def run(self, should_stop: ShouldStop | None) -> nn.Module:
        """All remaining epochs; the best model in eval mode."""
        s = self.s
        self.wrap()
        if self.out_dir is not None and self.main:
            truncate_log(self.out_dir / LOG_FILE, self.start_epoch)
        with StopFlag() as flag, _cudnn_benchmark(self.cuda):
            epoch_bar = progress(range(self.start_epoch, s.epochs), total=s.epochs, initial=self.start_epoch,
                                 desc=self.desc, leave=False, disable=None if self.main else True)
            for epoch in epoch_bar:
                t_epoch = time.perf_counter()
                record = self.end_epoch(epoch, self.train_epoch(epoch, flag, should_stop), t_epoch)
                if self.main:
                    epoch_bar.set_postfix({k: f"{v:.3f}" for k, v in record.items()
                                           if k in ("loss", "val_nat_acc", "val_rob_acc")})
            epoch_bar.close()
        if self.best["state"] is not None:
            load_state_into(self.raw, self.best["state"], source="best epoch")
        dist_utils.barrier()
        return self.raw.eval()


def fit(model: nn.Module, train_data: Any, train: "config_mod.TrainSettings",
        loss: "config_mod.LossSettings | None" = None, *,
        val_data: Any = None, out: str | os.PathLike | None = None, device: str | torch.device = "cpu",
        augment: Any = None, meta: Mapping[str, Any] | None = None, desc: str = "train",
        should_stop: ShouldStop | None = None) -> nn.Module:
    """Train ``model`` on ``train_data`` (a dataset with ``.x``/``.y`` tensors) and return the
    epoch that scores best on ``val_data`` (last epoch when ``val_data`` is None), in eval mode.

    ``train``: the ``[train]`` section (:class:`abstain.config.TrainSettings`: the loss by
    name, epochs, global batch size, SGD lr/momentum/weight decay with the lr schedule of
    :func:`lr_at`, seed, amp, channels_last, compile, sync_bn, model selection); ``loss``:
    the ``[loss]`` section (:class:`abstain.config.LossSettings`, the loss's parameters;
    default: all unset), checked against ``train.loss`` by
    :func:`abstain.config.resolve_loss`. ``batch_size`` is global (over all torchrun
    ranks). ``out``: checkpoint directory, written after every epoch (rank 0) and resumed
    from when it holds an unfinished run (a finished run is loaded and returned). ``meta``
    must then hold ``arch`` and ``num_classes`` (plus whatever rebuilds the model:
    ``model_kwargs``, ``dataset``…). ``augment``: None, a name for
    ``abstain.data.augment.build`` or a callable ``(x, generator) -> x``. ``amp``
    ("off"/"bf16"/"fp16") and ``channels_last`` act on CUDA (AMP only wraps the training
    forward passes; the inner attacks and the clean targets p(x), F(x) run in fp32);
    ``compile`` compiles the training forward passes (``$ABSTAIN_COMPILE_BACKEND``, default
    inductor), the attacks run on the plain module. ``should_stop(epoch, batch)`` is
    asked after every batch; True stops the run like a SIGINT (checkpoint, then
    :class:`TrainingInterrupted`).
    """
    if not isinstance(train, config_mod.TrainSettings):
        raise ConfigError(f"fit(train=...) takes an abstain.config.TrainSettings, got {type(train).__name__}")
    loss = config_mod.resolve_loss(train, config_mod.LossSettings() if loss is None else loss)
    if train.epochs == 0:
        raise ConfigError("epochs must be a positive integer, got 0")
    out_dir = Path(out) if out is not None else None
    if out_dir is not None and (meta is None or "arch" not in meta or "num_classes" not in meta):
        raise ConfigError("fit(out=...) needs meta with 'arch' and 'num_classes' to write checkpoints")
    if len(train_data) == 0:
        raise ConfigError("the training set is empty")
    trainer = Trainer(model, train_data, val_data, train, loss, out_dir, meta, device, augment, desc)
    try:
        finished = trainer.resume()
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        # a train_state.pt of the right types but the wrong contents (edited, or another
        # trainer's): one message, not a traceback
        raise CheckpointError(f"cannot resume from {out_dir}/{STATE_FILE}: {type(e).__name__}: "
                              f"{(str(e).splitlines() or [''])[0][:160]}") from None
    if finished:
        return trainer.raw.eval()
    return trainer.run(should_stop)
