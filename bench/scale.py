"""Benchmark: scaling of training, APGD evaluation and certification (JSON on stdout).

1. CPU, 1 vs 2 processes (``torchrun --nproc-per-node 2``, gloo): throughput in samples
   per second of the real CLI on the digits CNN —
   * ``train``: TRADES (ε = 0.1, 3 PGD steps) epochs; samples/s = training samples × epochs
     ÷ the summed per-epoch seconds of ``log.jsonl`` (an epoch's seconds include the
     validation attack);
   * ``evaluate``: APGD-CE (``--steps``) on the 450 test digits at ε = 0.1 (and 2ε);
     samples/s from the ``seconds`` the command reports in ``results.json``;
   * ``certify``: Cohen et al.'s CERTIFY with n0 = 64, n = ``--n`` noise samples; inputs
     per second and noise samples (forward passes) per second.
   Process start-up (Python + torch import, rendezvous) is excluded: the commands time
   their own work. On a 2-core machine 2 processes cannot give much more than 1 (and on a
   shared machine may give less); ``speedup`` reports what was measured.
2. GPU, when ``torch.cuda.is_available()``: the same three workloads on ``cuda`` with
   training AMP off / bf16 (attacks and certification always run in fp32), with the
   card's name. Without a GPU the section says so.
3. Bounded memory: peak RSS (``ru_maxrss`` of a fresh process running the command) of
   evaluation for N vs 10N test samples and of certification for N vs 10N inputs and for
   n vs 10n noise samples. Streaming means the peak does not grow with N or n (beyond the
   dataset tensor itself, which is loaded whole: 450 digits are 115 kB).

``--gpu-only`` runs section 2 alone, on ``--device`` (default cuda; ``cpu`` is a dry run of the
same code), with ``amp_speedup`` = bf16 / fp32 training samples per second.

Usage: python bench/scale.py [--quick] [--repeats 1] [--gpu-only [--device cuda]]
The machine may be shared: timings are wall-clock of the commands' own work, medians over
``--repeats``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CONFIG = """
[data]
name = "digits"
val_fraction = 0.1
[model]
arch = "cnn"
[train]
loss = "trades"
schedule = "constant"
epochs = {epochs}
batch_size = 128
lr = 0.05
seed = 0
val_steps = 3
amp = "{amp}"
[loss]
eps = 0.1
steps = 3
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "ABSTAIN_QUIET": "1",
                "PYTHONPATH": str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")})
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _abstain(args: list[str], nproc: int = 1) -> None:
    if nproc == 1:
        cmd = [sys.executable, "-m", "abstain", *args]
    else:  # `--` keeps torchrun's parser away from our options (`--run` vs its `--run-path`)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "abstain", "--", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env())
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")


def _train(work: Path, nproc: int, device: str, epochs: int, amp: str = "off") -> dict:
    cfg = work / f"train-{nproc}-{device}-{amp}.toml"
    cfg.write_text(CONFIG.format(epochs=epochs, amp=amp))
    out = work / f"run-{nproc}-{device}-{amp}"
    shutil.rmtree(out, ignore_errors=True)
    _abstain(["train", "--config", cfg, "--out", out, "--device", device], nproc)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    n_train = json.loads((out / "results.json").read_text())["train"]["n_train"]
    seconds = sum(r["seconds"] for r in log)
    return {"samples_per_s": n_train * len(log) / seconds, "seconds": seconds, "epochs": len(log),
            "n_train": n_train, "run": out}


def _evaluate(run: Path, nproc: int, device: str, steps: int, samples: int | None = None) -> dict:
    shutil.rmtree(run / "records", ignore_errors=True)
    extra = ["--samples", str(samples)] if samples else []
    _abstain(["evaluate", "--run", run, "--eps", "0.1", "--steps", str(steps), "--attack", "apgd-ce",
              "--batch-size", "150", "--device", device, "--overwrite", *extra], nproc)
    sec = json.loads((run / "results.json").read_text())["evaluate"]["meta"]
    return {"samples_per_s": sec["n"] / sec["seconds"], "seconds": sec["seconds"], "n": sec["n"],
            "steps": steps}


def _certify(run: Path, nproc: int, device: str, samples: int, n: int) -> dict:
    _abstain(["certify", "--run", run, "--sigma", "0.25", "--eps", "0.25", "--n0", "64", "--n", str(n),
              "--samples", str(samples), "--noise-batch-size", "1000", "--device", device], nproc)
    sec = json.loads((run / "results.json").read_text())["certify"]
    return {"inputs_per_s": samples / sec["seconds"], "noise_samples_per_s": samples * (n + 64) / sec["seconds"],
            "seconds": sec["seconds"], "samples": samples, "n": n}


def _median(runs: list[dict]) -> dict:
    out = dict(runs[0])
    for k, v in runs[0].items():
        if isinstance(v, float):
            out[k] = statistics.median(r[k] for r in runs)
    out.pop("run", None)
    return out


def _peak_rss_mb(args: list[str], repeats: int = 3) -> dict:
    """Peak resident memory (MiB) of fresh processes running ``abstain ARGS``: median, min
    and max over ``repeats`` (glibc's per-thread malloc arenas make single figures vary by
    tens of MiB from run to run)."""
    code = ("import resource, sys, torch\nfrom abstain import cli\n"
            "rc = cli.main(sys.argv[1:]) if sys.argv[1:] else 0\n"
            "print('RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\nsys.exit(rc)\n")
    vals = []
    for _ in range(repeats):
        r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                           env=_env())
        if r.returncode != 0:
            raise RuntimeError(r.stderr[-2000:])
        kb = int([ln for ln in r.stdout.splitlines() if ln.startswith("RSS")][-1].split()[1])
        vals.append(round(kb / 1024, 1))
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}


def _accelerator(work: Path, device: str, epochs: int, steps: int, cert_samples: int, cert_n: int) -> dict:
    """Section 2: train with AMP off and bf16, evaluate and certify (fp32) on ``device``."""
    import torch

    cuda = device.startswith("cuda")
    gpu: dict = {"name": torch.cuda.get_device_name(0) if cuda else f"{device} (dry run)", "device": device}
    for amp in ("off", "bf16"):
        tr = _train(work, 1, device, epochs, amp)
        gpu[f"train_amp_{amp}"] = _median([tr])
        if amp == "off":
            gpu["evaluate_fp32"] = _evaluate(tr["run"], 1, device, steps)
            gpu["certify_fp32"] = _certify(tr["run"], 1, device, cert_samples, cert_n)
    gpu["amp_speedup"] = gpu["train_amp_bf16"]["samples_per_s"] / gpu["train_amp_off"]["samples_per_s"]
    return gpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller workloads (smoke test)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--gpu-only", action="store_true", help="only the accelerator section")
    ap.add_argument("--device", default="cuda", help="device of the accelerator section")
    args = ap.parse_args()
    import torch

    epochs = 1 if args.quick else 2
    steps = 10 if args.quick else 20
    cert_samples, cert_n = (20, 1000) if args.quick else (50, 4000)
    work = Path(tempfile.mkdtemp(prefix="abstain-scale-"))
    result: dict = {
        "machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
                    "platform": platform.platform(), "load_avg_at_start": os.getloadavg()},
        "workloads": {"model": "digits cnn", "train": f"TRADES eps 0.1, 3 steps, {epochs} epochs, batch 128",
                      "evaluate": f"APGD-CE {steps} steps, eps 0.1 and 0.2, 450 test digits",
                      "certify": f"sigma 0.25, n0 64, n {cert_n}, {cert_samples} inputs"},
    }
    try:
        if args.gpu_only:
            result["gpu"] = _accelerator(work, args.device, epochs, steps, cert_samples, cert_n)
            return
        cpu: dict = {}
        base_run = None
        for nproc in (1, 2):
            tr = [_train(work, nproc, "cpu", epochs) for _ in range(args.repeats)]
            base_run = base_run or tr[0]["run"]
            ev = [_evaluate(base_run, nproc, "cpu", steps) for _ in range(args.repeats)]
            ce = [_certify(base_run, nproc, "cpu", cert_samples, cert_n) for _ in range(args.repeats)]
            cpu[f"{nproc}proc"] = {"train": _median(tr), "evaluate": _median(ev), "certify": _median(ce)}
        cpu["speedup_2_vs_1"] = {
            "train": cpu["2proc"]["train"]["samples_per_s"] / cpu["1proc"]["train"]["samples_per_s"],
            "evaluate": cpu["2proc"]["evaluate"]["samples_per_s"] / cpu["1proc"]["evaluate"]["samples_per_s"],
            "certify": cpu["2proc"]["certify"]["inputs_per_s"] / cpu["1proc"]["certify"]["inputs_per_s"],
        }
        result["cpu_gloo"] = cpu

        if torch.cuda.is_available():
            result["gpu"] = _accelerator(work, "cuda", epochs, steps, cert_samples, cert_n)
        else:
            result["gpu"] = {"available": False,
                             "note": "no CUDA device on this machine: GPU/AMP figures not measured"}

        rss_run = base_run
        ev_args = ["evaluate", "--run", rss_run, "--eps", "0.1", "--steps", "5", "--attack", "apgd-ce",
                   "--batch-size", "45", "--device", "cpu", "--overwrite"]
        ce_args = ["certify", "--run", rss_run, "--sigma", "0.25", "--eps", "0.25", "--n0", "64",
                   "--noise-batch-size", "500", "--device", "cpu"]
        result["peak_rss_mib"] = {
            "evaluate_N45": _peak_rss_mb([*ev_args, "--samples", "45"]),
            "evaluate_N450": _peak_rss_mb([*ev_args, "--samples", "450"]),
            "certify_N20_n2000": _peak_rss_mb([*ce_args, "--samples", "20", "--n", "2000"]),
            "certify_N200_n2000": _peak_rss_mb([*ce_args, "--samples", "200", "--n", "2000"]),
            "certify_N20_n20000": _peak_rss_mb([*ce_args, "--samples", "20", "--n", "20000"]),
            "baseline_import_only": _peak_rss_mb([]),
            "note": "batch sizes fixed (evaluate 45, certify 500 noise samples per forward pass); "
                    "each figure is the peak of a fresh process including Python + torch "
                    "(baseline_import_only: Python + torch + abstain imported, nothing run)",
        }
        result["load_avg_at_end"] = os.getloadavg()
    finally:
        shutil.rmtree(work, ignore_errors=True)
        print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
