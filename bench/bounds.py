"""Benchmark: how many points sound bounds prove robust, and what they cost (JSON on stdout).

For each ``--model NAME=RUN_DIR:EPS`` (a run directory of ``abstain train``; its data set is
read from ``meta.json``) the first ``--n`` test points are bounded at ε (ℓ∞ unless
``--norm l2``) with every ``bounds`` mode of :func:`abstain.attacks.bounds.certified`
(``ibp``: interval bounds and the last layer; ``crown``: max of that and CROWN with interval
intermediates; ``crown-full``: CROWN intermediates too) and attacked with APGD-CE
(``--steps``, the paper's protocol) and the strong attack (the default of ``is_robust``, the
tightest empirical upper limit here). Reported per model: the fraction proven robust by
each bound, the fractions robust under the two attacks, proofs contradicted by an attack
(must be 0), and the seconds of each (median of ``--repeats`` for the bounds, after one
warm-up that traces the model), with the bounds' time relative to one APGD-CE run.

Usage: python bench/bounds.py --model digits=runs/digits-trades:0.1 \\
           --model mnist1d=runs/mnist1d-trades:0.02 [--n 300] [--steps 40] [--threads 1]
           [--bounds ibp crown crown-full]
Timings depend on the machine's load (it may be shared); the script prints its settings.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch


def measure(name: str, run: str, eps: float, args: argparse.Namespace) -> dict:
    """Proven / robust fractions and timings of one model (see the module doc)."""
    from abstain import data
    from abstain.api import tensors_of
    from abstain.attacks import is_robust
    from abstain.attacks.bounds import certified
    from abstain.checkpoint import load_checkpoint

    model, meta = load_checkpoint(run)
    for p in model.parameters():
        p.requires_grad_(False)
    x, y = tensors_of(data.load(meta["config"]["data"]["name"], "test"))
    x, y = x[: args.n], y[: args.n]
    with torch.no_grad():
        logits = model(x)
    pred = logits.argmax(1)
    out: dict = {"model": name, "run": run, "eps": eps, "norm": args.norm, "n": int(x.shape[0]),
                 "natural_accuracy": float((pred == y).float().mean())}

    def timed(f):   # noqa: ANN001, ANN202
        t = time.perf_counter()
        r = f()
        return r, time.perf_counter() - t

    proven = {}
    for b in args.bounds:
        certified(model, x[:2], pred[:2], logits[:2], eps, args.norm, b)   # warm-up: the trace
        times = []
        for _ in range(args.repeats):
            cert, s = timed(lambda: certified(model, x, pred, logits, eps, args.norm, b))
            times.append(s)
        proven[b] = cert
        out[f"proven_{b}"] = None if cert is None else float(cert.float().mean())
        out[f"seconds_{b}"] = statistics.median(times)
    apgd, out["seconds_apgd_ce"] = timed(lambda: is_robust(model, x, eps=eps, norm=args.norm, steps=args.steps,
                                                           attack="apgd-ce"))
    strong, out["seconds_strong"] = timed(lambda: is_robust(model, x, eps=eps, norm=args.norm, steps=args.steps))
    out["robust_apgd_ce"] = float(apgd.float().mean())
    out["robust_strong"] = float(strong.float().mean())
    for b in args.bounds:
        out[f"{b}_vs_apgd_ce_time"] = out[f"seconds_{b}"] / out["seconds_apgd_ce"]
        cert = proven[b]
        out[f"proofs_contradicted_{b}"] = 0 if cert is None else int((cert & ~(strong & apgd)).sum())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True, help="NAME=RUN_DIR:EPS (repeatable)")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--norm", default="linf", choices=["linf", "l2"])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--bounds", nargs="+", default=["ibp", "crown", "crown-full"],
                    choices=["ibp", "crown", "crown-full"], help="bounds modes to measure (crown-full is slow)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for spec in args.model:
        name, rest = spec.split("=", 1)
        run, eps = rest.rsplit(":", 1)
        rows.append(measure(name, run, float(eps), args))
    print(json.dumps({"settings": {"n": args.n, "norm": args.norm, "steps": args.steps, "repeats": args.repeats,
                                   "bounds": args.bounds, "threads": args.threads, "torch": torch.__version__,
                                   "machine": platform.machine(), "processor": platform.processor()},
                      "models": rows}, indent=1))


if __name__ == "__main__":
    main()
