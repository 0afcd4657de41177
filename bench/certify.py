"""Benchmark: randomized-smoothing throughput against the bare forward pass (JSON on stdout).

``certify_vs_floor`` = noise samples per second of ``Smooth.certify`` (selection + estimation:
noise drawn on the device, forward, argmax, bincount) ÷ forward-pass samples per second of the
same model on one pre-made batch of the same size (the floor: no noise, no counting). Goal ≥ 0.9.
Models: the digits CNN (1×8×8) and ResNet-110 (3×32×32, Cohen et al.'s CIFAR model; untrained
weights: the speed does not depend on them).

Sample savings of the sequential certificate: with ``--run DIR`` (a digits run directory) the
model is certified sequentially on ``--inputs`` test digits at ``--sigma``, α = 0.001, radii
``--eps`` (add ``--double`` for their doubles too), n_max = 100,000, and the ratio (n0 + N) / mean sequential forward
passes is reported (a fixed-N certify always uses n0 + N, so only the sequential side is run).
Without ``--run`` the same is measured on a threshold classifier whose true radii are spread
uniformly over [0, 1.2] σ (closed-form p_A).

Usage: python bench/certify.py [--device auto] [--repeats 5] [--run DIR] [--threads N]
       [--only cnn resnet110] [--double]
Timings are medians of interleaved repetitions (the machine may be shared).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def throughput(name: str, model: torch.nn.Module, shape: tuple[int, ...], batch: int, batches: int,
               repeats: int, device: torch.device) -> dict:
    from abstain.smoothing import Smooth

    model = model.to(device).eval()
    smooth = Smooth(model, 10, 0.25)
    x = torch.rand(1, *shape, device=device)
    xb = torch.rand(batch, *shape, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    n_total = batch * batches

    def floor() -> float:
        with torch.inference_mode():
            _sync(device)
            t = time.perf_counter()
            for _ in range(batches):
                model(xb).argmax(1)
            _sync(device)
        return n_total / (time.perf_counter() - t)

    def certify() -> float:
        _sync(device)
        t = time.perf_counter()
        smooth.certify(x[0], batch, n_total - batch, 0.001, batch, gen)   # n0 + n = n_total
        _sync(device)
        return n_total / (time.perf_counter() - t)

    floor(), certify()  # warm-up
    f, c = [], []
    for _ in range(repeats):
        f.append(floor())
        c.append(certify())
    fm, cm = statistics.median(f), statistics.median(c)
    return {"model": name, "input_shape": list(shape), "batch_size": batch, "samples_per_call": n_total,
            "floor_samples_per_s": fm, "certify_samples_per_s": cm, "certify_vs_floor": cm / fm}


def savings(args: argparse.Namespace, device: torch.device) -> dict:
    from abstain.smoothing import Smooth, certify_sequential

    n0, n_max, alpha = 100, 100_000, 0.001
    radii = sorted(set(args.eps) | ({2 * e for e in args.eps} if args.double else set()))
    if args.run:
        from abstain.checkpoint import load_checkpoint
        from abstain.data import balanced_subset, load

        model, meta = load_checkpoint(args.run, device)
        data = load(meta["dataset"], "test", root=meta.get("data_root"))
        idx = balanced_subset(data.y, args.inputs, data.num_classes, seed=0)
        x, what = data.x[idx].to(device), f"{args.run} on {len(idx)} {meta['dataset']} test inputs"
        smooth = Smooth(model, int(meta["num_classes"]), args.sigma)
    else:
        class Threshold(torch.nn.Module):
            def forward(self, z):
                v = z.flatten(1)[:, 0]
                return torch.stack([0.9 - v, v - 0.9], 1)

        g = torch.Generator().manual_seed(0)
        true_r = torch.rand(args.inputs, generator=g) * 1.2 * args.sigma
        x = torch.full((args.inputs, 4), 0.5)
        x[:, 0] = 0.9 - true_r
        x, what = x.to(device), f"threshold classifier, {args.inputs} inputs, true radii U[0, 1.2 sigma]"
        smooth = Smooth(Threshold(), 2, args.sigma)
    t = time.perf_counter()
    res = certify_sequential(smooth, x, radii, n0=n0, n_max=n_max, alpha=alpha, batch_size=args.seq_batch,
                             generator=torch.Generator(device=device).manual_seed(0))
    seconds = time.perf_counter() - t
    mean = float(res.samples.double().mean())
    return {"what": what, "sigma": args.sigma, "radii": radii, "alpha": alpha, "n0": n0, "n_max": n_max,
            "fixed_passes_per_input": n0 + n_max, "sequential_passes_per_input": mean,
            "samples_ratio": (n0 + n_max) / mean, "looks": list(res.schedule),
            "share_at_n_max": float((res.n == n_max).double().mean()), "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--run", default=None, help="digits run directory for the sample savings")
    ap.add_argument("--sigma", type=float, default=0.25)
    ap.add_argument("--eps", type=float, nargs="+", default=[0.12, 0.25])
    ap.add_argument("--inputs", type=int, default=200)
    ap.add_argument("--seq-batch", type=int, default=4096)
    ap.add_argument("--double", action="store_true", help="also decide 2*eps in the savings")
    ap.add_argument("--only", nargs="+", default=["cnn", "resnet110"], choices=["cnn", "resnet110"])
    ap.add_argument("--cnn-batches", type=int, default=20)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from abstain import models
    from abstain.utils import resolve_device

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    rows = []
    if "cnn" in args.only:
        rows.append(throughput("cnn (digits)", models.create("cnn", 10), (1, 8, 8), 1000,
                               args.cnn_batches if not cuda else 50, args.repeats, device))
    if "resnet110" in args.only:
        try:
            resnet = models.create("resnet110", 10)
            rows.append(throughput("resnet110 (32x32)", resnet, (3, 32, 32), 1000 if cuda else 64,
                                   20 if cuda else 3, args.repeats, device))
        except Exception as e:  # pragma: no cover - registry entry missing
            rows.append({"model": "resnet110", "error": f"{type(e).__name__}: {e}"})
    out = {
        "bench": "certify",
        "device": torch.cuda.get_device_name(device) if cuda else f"cpu ({platform.processor() or platform.machine()})",
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "throughput": rows,
        "certify_vs_floor": {r["model"]: r.get("certify_vs_floor") for r in rows},
        "sequential_savings": savings(args, device),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
