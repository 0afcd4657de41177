"""The jobs behind ``abstain evaluate`` and ``abstain certify``: a model source, a test
(sub)set, the computation in resumable chunks (:mod:`abstain.chunks`: each finished chunk's
records are kept under the output's work area, so a rerun after a kill skips them), and the
files: the ``results.json`` section first, the records file LAST (its presence marks a
finished job), then the work area is removed."""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from safetensors.torch import load, save
import torch

from . import data as data_mod
from . import distributed, evaluation  # evaluation.evaluate is looked up at call time (tests spy on it)
from .attacks import resolve_attack
from .checkpoint import MAX_META_BYTES, META_FILE
from .chunks import ChunkedJob, ChunkStore, index_digest, job_key, model_digest
from .data import balanced_subset
from .errors import ConfigError
from .evaluation import radii, record_columns
from .io import atomic_write_bytes, update_json
from .model_checks import check_batch_independent, check_behaviour
from .outputs import Output, work_dir
from .records import Records, eps_text, write_records
from .safefiles import check_regular
from .sources import ModelSource
from .validate import check_eps, check_pixel_eps


def _refuse_existing(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} exists; pass --overwrite to replace it")


_IDENTITY = ("run", "model", "weights")


def _identity_of(section: Any) -> dict[str, Any]:
    """The dataset and model a ``results.json`` section (or a run's meta) was computed for."""
    if not isinstance(section, dict):
        return {}
    meta = section.get("meta") if isinstance(section.get("meta"), dict) else {}
    found = {k: v for k, v in {**section, **meta}.items() if k in ("dataset", *_IDENTITY)}
    return {k: v for k, v in found.items() if isinstance(v, (str, type(None)))}


def refuse_foreign_results(out: Path, source: ModelSource, overwrite: bool) -> None:
    """Refuse (unless ``overwrite``) to write beside results of another dataset or model:
    ``out/meta.json`` (a run directory of another dataset) or a ``results.json`` section
    whose dataset, run or model differs from ``source``'s (issue 25, item 4)."""
    if overwrite:
        return
    ours = {"dataset": source.dataset, **{k: source.describe.get(k) for k in _IDENTITY if k in source.describe}}
    if source.run_dir is not None:
        ours["run"] = str(source.run_dir)
    found: dict[str, dict[str, Any]] = {}
    for name, what in ((META_FILE, "its run"), ("results.json", None)):
        path = out / name
        if not path.is_file():
            continue
        try:
            check_regular(path, MAX_META_BYTES, name, ConfigError)
            data = json.loads(path.read_text())
        except (ConfigError, OSError, ValueError):
            continue       # unreadable: the writers name it
        if not isinstance(data, dict):
            continue
        if what is not None:
            found[what] = {"dataset": data.get("dataset")} if isinstance(data.get("dataset"), str) else {}
        else:
            found.update({f"its {k!r} results": _identity_of(v) for k, v in data.items() if k != "train"})
    in_a_run = "its run" in found or (out / META_FILE).exists()   # a run directory: its dataset decides
    for what, ident in found.items():
        for key, value in ident.items():
            if key == "run" and in_a_run:
                continue
            if key in ours and value is not None and ours[key] is not None and value != ours[key]:
                raise ConfigError(f"{out} holds {what} for {key} {value!r:.80}, not {ours[key]!r:.80}; "
                                  "choose another --out, or pass --overwrite to write beside them")
            if key == "dataset" and value is not None and value != ours["dataset"]:
                raise ConfigError(f"{out} holds {what} for dataset {value!r:.40}, not {ours['dataset']!r:.40}; "
                                  "choose another --out, or pass --overwrite to write beside them")


def check_seed(seed: Any, flag: str = "--seed") -> int:
    """A seed every generator takes: an integer in [0, 2**63)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ConfigError(f"{flag} must be an integer in [0, 2**63), got {seed!r:.40}")
    return seed


def evaluate_outputs(out: Path, s: "EvaluateSettings") -> list[Output]:
    """What ``abstain evaluate`` writes: checked (and locked) before the model is loaded."""
    outs = [Output(out / "records" / "evaluate.csv", "evaluate"),
            Output(out / "results.json", "results", section="evaluate", exclusive=False)]
    if s.save_adversarial:
        outs.append(Output(Path(s.save_adversarial), "evaluate --save-adversarial"))
    return outs


def certify_outputs(out: Path) -> list[Output]:
    """What ``abstain certify`` writes."""
    return [Output(out / "records" / "certify.csv", "certify"),
            Output(out / "results.json", "results", section="certify", exclusive=False)]


def test_subset(source: ModelSource, samples: int | None, seed: int, split: str = "test"):
    """The split of the source's dataset, or a seeded class-balanced subset of ``samples``;
    returns (dataset, subset indices or None)."""
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
    attack: str | None = None          # None: abstain.attacks.DEFAULT_ATTACK
    batch_size: int = 256
    seed: int = 0
    samples: int | None = None
    save_adversarial: str | None = None
    chunk: int | None = None           # inputs per resumable chunk (None: batch_size)
    split: str = "test"

    def check(self) -> list[float]:
        """Refuse bad settings before any model is loaded; the radii to evaluate."""
        eps_list = radii(self.eps, self.double_eps)   # validates every ε
        for e in self.eps:
            check_pixel_eps(e, self.norm)
        if self.steps < 0:
            raise ConfigError(f"--steps must be >= 0, got {self.steps}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be positive, got {self.batch_size}")
        if self.samples is not None and self.samples < 1:
            raise ConfigError(f"--samples must be positive, got {self.samples}")
        if self.chunk is not None and self.chunk < 1:
            raise ConfigError(f"--chunk must be >= 1, got {self.chunk}")
        check_seed(self.seed)
        return eps_list


def evaluate_job(source: ModelSource, out: Path, s: EvaluateSettings, device: Any,
                 overwrite: bool = False, allow_batch_dependent: bool = False) -> dict[str, Any]:
    """Evaluate ``source`` (:func:`abstain.evaluation.evaluate`) into ``out/records/evaluate.csv``
    and ``out/results.json["evaluate"]``; returns that section (``records``: the file).

    Resumable: the inputs are evaluated in chunks of ``s.chunk`` (default ``s.batch_size``)
    whose records are kept under ``out``'s work area (:mod:`abstain.chunks`); a rerun of the
    same command skips the finished chunks. The records do not depend on the chunking (the
    random starts follow the sample index). A model whose logits depend on the batch is
    refused unless ``allow_batch_dependent`` (:func:`abstain.model_checks.check_batch_independent`),
    and so is an ℓ2 radius beyond the inputs' box (:func:`abstain.validate.check_pixel_eps`)."""
    eps_list = s.check()
    records_path = out / "records" / "evaluate.csv"
    _refuse_existing(records_path, overwrite)
    refuse_foreign_results(out, source, overwrite)
    ds, subset = test_subset(source, s.samples, s.seed, s.split)
    for e in s.eps:
        check_pixel_eps(e, s.norm, dim=int(ds.x[0].numel()))
    check_behaviour(source.model, ds.x, "the model", needs_grad=s.steps > 0)
    check_batch_independent(source.model, ds.x, "the model", allow=allow_batch_dependent)
    distributed.init_from_env(device)
    t0 = time.time()
    chunk = s.chunk or s.batch_size
    key = _key(source, subset, s, chunk=chunk)
    job = ChunkedJob(len(ds), chunk, desc="evaluate")
    job.store = store = ChunkStore(work_dir(out, "evaluate-" + key), key, job.positions)

    def evaluate_chunk(k: int, rows: torch.Tensor) -> dict[str, Any]:
        adv = str(store.path(k, "safetensors")) if s.save_adversarial else None
        res = evaluation.evaluate(source.model, ds.subset(rows), eps=s.eps, norm=s.norm, steps=s.steps,
                                  double_eps=s.double_eps, attack=s.attack, batch_size=s.batch_size, device=device,
                                  seed=s.seed, save_adversarial=adv, show_progress=False, index_offset=int(rows[0]))
        return record_columns(res)     # saved after the adversarial file: the chunk marks both

    cols = job.run(evaluate_chunk, companions=("safetensors",) if s.save_adversarial else ())
    section: dict[str, Any] = {}
    if distributed.is_main():
        assert cols is not None
        section = _evaluate_section(cols, s, eps_list, source, subset, time.time() - t0)
        if subset is not None:
            cols["index"] = subset.numpy()[cols["index"]]
        if s.save_adversarial:
            _merge_adversarial(store, job.n_chunks, s.save_adversarial, subset, eps_list)
        update_json(out / "results.json", "evaluate", section)
        write_records(records_path, cols)
        store.remove()
    distributed.barrier()
    return {**section, "records": records_path, "radii": eps_list}


def _key(source: ModelSource, subset: Any, settings: Any, **extra: Any) -> str:
    """What a job's records depend on: the settings, the model's weights, the data, the subset."""
    return job_key(settings=asdict(settings), model=model_digest(source.model), dataset=source.dataset,
                   data_root=source.data_root, data_seed=source.data_seed, subset=index_digest(subset),
                   **extra)


def _evaluate_section(cols: dict[str, Any], s: EvaluateSettings, eps_list: list[float],
                      source: ModelSource, subset: Any, seconds: float) -> dict[str, Any]:
    parts = {eps_text(e): Records(cols).partition(e) for e in eps_list}
    return {
        "nat_acc": parts[f"{eps_list[0]:g}"]["nat_acc"],
        "eps": parts,
        "meta": {"eps": [float(e) for e in s.eps], "radii": eps_list, "norm": s.norm,
                 "steps": s.steps, "attack": resolve_attack(s.attack), "seed": s.seed,
                 "dataset": source.dataset, "split": s.split, "n": int(len(cols["index"])),
                 "data_seed": source.data_seed, "samples": s.samples,
                 "subset": "class-balanced, seeded" if subset is not None else "all",
                 "seconds": round(seconds, 3), **source.describe},
    }


def _merge_adversarial(store: ChunkStore, n_chunks: int, path: str, subset: torch.Tensor | None,
                       eps_list: list[float]) -> None:
    """One ``--save-adversarial`` file from the chunks' files; saved ``index@<ε>`` are dataset
    indices (positions in the subset mapped through it)."""
    parts = [load(store.companion(k, "safetensors")) for k in range(n_chunks)]
    tensors: dict[str, torch.Tensor] = {}
    for e in eps_list:
        idx = torch.cat([p[f"index@{e:g}"] for p in parts])
        advs = [p[f"adv@{e:g}"] for p in parts if p[f"index@{e:g}"].numel()]
        tensors[f"adv@{e:g}"] = torch.cat(advs).contiguous() if advs else torch.zeros(0)
        tensors[f"index@{e:g}"] = (subset[idx] if subset is not None and idx.numel() else idx).contiguous()
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
        from .smoothing.smooth import check_alpha, check_count, check_sigma  # noqa: PLC0415  heavy: scipy, certify only
        self.sigma, self.alpha = check_sigma(self.sigma), check_alpha(self.alpha)
        self.n0, self.n = check_count(self.n0, "n0"), check_count(self.n, "n")
        check_count(self.batch_size, "batch_size")
        if self.samples < 1:
            raise ConfigError(f"--samples must be >= 1, got {self.samples}")
        if self.chunk is not None and self.chunk < 1:
            raise ConfigError(f"--chunk must be >= 1, got {self.chunk}")
        check_seed(self.seed)
        self.eps = [check_eps(e) for e in self.eps]
        self._check_reachable()

    def _check_reachable(self) -> None:
        """Refuse an ε that no input can be certified at: with every one of ``n`` noise
        samples on the top class the Clopper–Pearson bound is α^{1/n} and the radius
        σ·Φ⁻¹(α^{1/n}) (Cohen et al.'s CERTIFY); larger radii are never certified."""
        from .smoothing.smooth import max_certifiable_radius  # noqa: PLC0415  heavy: scipy, certify only

        r = max_certifiable_radius(self.n, self.alpha, self.sigma)
        for e in self.eps:
            if not e <= r:
                reach = (f"the largest radius it can certify is {r:.4f}" if r > 0
                         else "no radius can be certified (every input abstains)")
                raise ConfigError(f"certify: --eps {e:g} is unreachable: with --n {self.n}, --alpha {self.alpha:g} "
                                  f"and --sigma {self.sigma:g} {reach}; raise --n or --sigma")


def certify_job(source: ModelSource, out: Path, s: CertifySettings, device: Any,
                overwrite: bool = False, allow_batch_dependent: bool = False) -> dict[str, Any]:
    """Certify ``source`` on a class-balanced subset into ``out/records/certify.csv`` and
    ``out/results.json["certify"]``; returns that section.

    Resumable like :func:`evaluate_job`: each chunk of inputs (chunk k certified with the
    generator of ``(seed, k)``) is kept under ``out``'s work area; a rerun skips finished
    chunks. Only one chunk's inputs are on the device at a time and the finished records
    live on disk, so memory does not grow with ``--samples``."""
    from .smoothing.records import (  # noqa: PLC0415  heavy: scipy, certify only
        certify_chunk, certify_metrics, decision_radii, plan_chunks)

    s.check()
    records_path = out / "records" / "certify.csv"
    _refuse_existing(records_path, overwrite)
    refuse_foreign_results(out, source, overwrite)
    distributed.init_from_env(device)
    device = distributed.local_device(device)
    data = source.load_data(s.split)
    check_behaviour(source.model, data.x, "the model", needs_grad=False)
    check_batch_independent(source.model, data.x, "the model", allow=allow_batch_dependent)
    idx = balanced_subset(data.y, s.samples, data.num_classes, seed=s.seed)
    plan = plan_chunks(source.model.to(device), num_classes=source.num_classes, sigma=s.sigma, eps=list(s.eps),
                       n0=s.n0, n=s.n, alpha=s.alpha, batch_size=s.batch_size, sequential=s.sequential,
                       seed=s.seed, chunk=s.chunk, device=device)
    key = _key(source, idx, s, chunk=plan.chunk, device=device.type)
    job = ChunkedJob(len(idx), plan.chunk, desc="certify")
    job.store = store = ChunkStore(work_dir(out, "certify-" + key), key, lambda k: idx[job.positions(k)])
    t0 = time.perf_counter()
    cols = job.run(lambda k, rows: certify_chunk(plan, k, data.x[idx[rows]], data.y[idx[rows]], idx[rows]))
    seconds = time.perf_counter() - t0
    section: dict[str, Any] = {}
    if distributed.is_main():
        assert cols is not None
        section = {
            "sigma": s.sigma, "eps": s.eps, "radii": decision_radii(s.eps), "n0": s.n0, "n": s.n,
            "alpha": s.alpha, "samples": len(idx), "split": s.split, "subset": "class-balanced, seeded",
            "seed": s.seed, "sequential": bool(s.sequential), "batch_size": s.batch_size,
            "device": str(device), "world_size": distributed.world_size(), "seconds": seconds,
            "dataset": source.dataset, "data_seed": source.data_seed,
            "metrics": certify_metrics(cols, s.eps), **source.describe,
        }
        update_json(out / "results.json", "certify", section)
        write_records(records_path, cols)
        store.remove()
    return {**section, "records": records_path}


__all__ = ["check_seed", "evaluate_job", "certify_job", "evaluate_outputs", "certify_outputs", "test_subset", "EvaluateSettings", "CertifySettings"]
