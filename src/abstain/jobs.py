"""The jobs behind ``abstain evaluate`` and ``abstain certify``: a model source, a test
(sub)set, the computation, and the files (``results.json`` section first, the records file
LAST: its presence marks a finished job, so a kill in between leaves nothing to
``--overwrite``)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from . import distributed
from .errors import ConfigError
from .io import update_json
from .records import write_records
from .sources import ModelSource


def _refuse_existing(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} exists; pass --overwrite to replace it")


def test_subset(source: ModelSource, samples: int | None, seed: int, split: str = "test"):
    """The split of the source's dataset, or a seeded class-balanced subset of ``samples``;
    returns (dataset, subset indices or None)."""
    from . import data as data_mod

    ds = source.load_data(split)
    if samples is None:
        return ds, None
    subset = data_mod.balanced_subset(ds.y, samples, ds.num_classes, seed=seed)
    return ds.subset(subset), subset


@dataclass
class EvaluateSettings:
    """The attack and run settings of ``abstain evaluate`` (see its ``--help``)."""

    eps: Sequence[float]
    norm: str = "linf"
    steps: int = 40
    double_eps: bool = True
    ensemble: bool = False
    attack: str | None = None          # None: abstain.attacks.DEFAULT_ATTACK
    batch_size: int = 256
    seed: int = 0
    samples: int | None = None
    save_adversarial: str | None = None

    def check(self) -> list[float]:
        """Refuse bad settings before any model is loaded; the radii to evaluate."""
        from .evaluation import radii

        eps_list = radii(self.eps, self.double_eps)   # validates every ε
        if self.steps < 0:
            raise ConfigError(f"--steps must be >= 0, got {self.steps}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be positive, got {self.batch_size}")
        if self.samples is not None and self.samples < 1:
            raise ConfigError(f"--samples must be positive, got {self.samples}")
        return eps_list


def evaluate_job(source: ModelSource, out: Path, s: EvaluateSettings, device: Any,
                 overwrite: bool = False) -> dict[str, Any]:
    """Evaluate ``source`` (:func:`abstain.evaluation.evaluate`) into ``out/records/evaluate.csv``
    and ``out/results.json["evaluate"]``; returns that section (``records``: the file)."""
    from .attacks import resolve_attack
    from .evaluation import evaluate, record_columns

    eps_list = s.check()
    records_path = out / "records" / "evaluate.csv"
    _refuse_existing(records_path, overwrite)
    ds, subset = test_subset(source, s.samples, s.seed)
    distributed.init_from_env(device)
    t0 = time.time()
    res = evaluate(source.model, ds, eps=s.eps, norm=s.norm, steps=s.steps, double_eps=s.double_eps,
                   ensemble=s.ensemble, attack=s.attack, batch_size=s.batch_size, device=device, seed=s.seed,
                   save_adversarial=s.save_adversarial)
    cols = record_columns(res)
    if subset is not None:
        cols["index"] = subset.numpy()[cols["index"]]
        if s.save_adversarial and distributed.is_main():
            _remap_saved_indices(s.save_adversarial, subset, eps_list)
    section = {
        "nat_acc": res["partition"][f"{eps_list[0]:g}"]["nat_acc"],
        "eps": res["partition"],
        "meta": {"eps": [float(e) for e in s.eps], "radii": eps_list, "norm": s.norm,
                 "steps": s.steps, "attack": resolve_attack(s.attack, s.ensemble), "seed": s.seed,
                 "dataset": source.dataset, "split": "test", "n": int(len(cols["index"])),
                 "data_seed": source.data_seed, "samples": s.samples,
                 "subset": "class-balanced, seeded" if subset is not None else "all",
                 "seconds": round(time.time() - t0, 3), **source.describe},
    }
    if distributed.is_main():
        update_json(out / "results.json", "evaluate", section)
        write_records(records_path, cols)
    distributed.barrier()
    return {**section, "records": records_path, "radii": eps_list}


def _remap_saved_indices(path: str, subset: torch.Tensor, eps_list: list[float]) -> None:
    """Saved ``index@<ε>`` are positions in the subset; store dataset indices instead."""
    from safetensors.torch import load_file, save

    from .io import atomic_write_bytes

    tensors = load_file(path)
    for e in eps_list:
        key = f"index@{e:g}"
        if key in tensors and tensors[key].numel():
            tensors[key] = subset[tensors[key]].contiguous()
    atomic_write_bytes(path, save(tensors))


@dataclass
class CertifySettings:
    """The smoothing and run settings of ``abstain certify`` (see its ``--help``)."""

    sigma: float
    eps: Sequence[float]
    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    samples: int = 500
    split: str = "test"
    sequential: bool = False
    batch_size: int = 1000
    chunk: int | None = None
    seed: int = 0

    def check(self) -> None:
        """Refuse bad settings before any model is loaded (normalises sigma, alpha, eps)."""
        from .smoothing.smooth import check_alpha, check_count, check_sigma
        from .validate import check_eps

        self.sigma, self.alpha = check_sigma(self.sigma), check_alpha(self.alpha)
        self.n0, self.n = check_count(self.n0, "n0"), check_count(self.n, "n")
        check_count(self.batch_size, "batch_size")
        if self.samples < 1:
            raise ConfigError(f"--samples must be >= 1, got {self.samples}")
        if self.chunk is not None and self.chunk < 1:
            raise ConfigError(f"--chunk must be >= 1, got {self.chunk}")
        self.eps = [check_eps(e) for e in self.eps]


def certify(model: torch.nn.Module, data: Any, *, sigma: float, eps: Sequence[float],
            num_classes: int | None = None, n0: int = 100, n: int = 100_000, alpha: float = 0.001,
            sequential: bool = False, batch_size: int = 1000, chunk: int | None = None, seed: int = 0,
            device: Any = "auto", on_progress: Any = None) -> dict[str, Any]:
    """Per-input randomized-smoothing records of ``model`` (inputs in [0, 1] -> logits) on a
    Dataset ``data`` (``.x``, ``.y``): Cohen et al.'s CERTIFY at level ``alpha``, or the
    sequential test, deciding every ℓ2 radius of ``eps`` and its double
    (:func:`abstain.smoothing.records.certify_records`, whose columns it returns)."""
    from .smoothing.records import certify_records
    from .utils import resolve_device

    s = CertifySettings(sigma=sigma, eps=eps, n0=n0, n=n, alpha=alpha, samples=max(len(data), 1),
                        sequential=sequential, batch_size=batch_size, chunk=chunk, seed=seed)
    s.check()
    k = num_classes if num_classes is not None else int(data.num_classes)
    dev = distributed.local_device(resolve_device(device))
    return certify_records(model.to(dev), data.x, data.y, torch.arange(len(data.y)), num_classes=k,
                           sigma=s.sigma, eps=list(s.eps), n0=s.n0, n=s.n, alpha=s.alpha,
                           batch_size=s.batch_size, sequential=s.sequential, seed=s.seed, chunk=s.chunk,
                           device=dev, on_progress=on_progress)


def certify_job(source: ModelSource, out: Path, s: CertifySettings, device: Any,
                overwrite: bool = False) -> dict[str, Any]:
    """Certify ``source`` on a class-balanced subset into ``out/records/certify.csv`` and
    ``out/results.json["certify"]``; returns that section."""
    from .data import balanced_subset
    from .smoothing.records import certify_metrics, certify_records, decision_radii
    from .utils import progress

    s.check()
    records_path = out / "records" / "certify.csv"
    _refuse_existing(records_path, overwrite)
    distributed.init_from_env(device)
    device = distributed.local_device(device)
    data = source.load_data(s.split)
    idx = balanced_subset(data.y, s.samples, data.num_classes, seed=s.seed)
    t0 = time.perf_counter()
    bar = progress(total=len(idx), desc="certify", disable=None if distributed.is_main() else True)
    try:
        cols = certify_records(source.model.to(device), data.x[idx], data.y[idx], idx,
                               num_classes=source.num_classes, sigma=s.sigma, eps=list(s.eps), n0=s.n0,
                               n=s.n, alpha=s.alpha, batch_size=s.batch_size, sequential=s.sequential,
                               seed=s.seed, chunk=s.chunk, device=device, on_progress=bar.update)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    section: dict[str, Any] = {}
    if distributed.is_main():
        section = {
            "sigma": s.sigma, "eps": s.eps, "radii": decision_radii(s.eps), "n0": s.n0, "n": s.n,
            "alpha": s.alpha, "samples": len(idx), "split": s.split, "subset": "class-balanced, seeded",
            "seed": s.seed, "sequential": bool(s.sequential), "batch_size": s.batch_size,
            "device": str(device), "world_size": distributed.world_size(), "seconds": seconds,
            "metrics": certify_metrics(cols, s.eps), **source.describe,
        }
        update_json(out / "results.json", "certify", section)
        write_records(records_path, cols)
    return {**section, "records": records_path}


__all__ = ["evaluate_job", "certify_job", "certify", "test_subset", "EvaluateSettings", "CertifySettings"]
