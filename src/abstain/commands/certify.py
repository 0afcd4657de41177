"""``abstain certify``: randomized-smoothing certification of a run's model on a test subset."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

HELP = "certify a run's model with randomized smoothing (Cohen et al.; optional sequential test)"
DESCRIPTION = (
    "Certify the smoothed classifier of the model in --run (a run directory) on a seeded, "
    "class-balanced subset of its dataset's test split: Cohen et al.'s CERTIFY (N0 selection "
    "samples, N estimation samples, one-sided Clopper-Pearson bound at level alpha), or with "
    "--sequential the sequential test that stops as soon as every asked radius (and its double, "
    "for robust selection) is decided, at the same alpha with at most N samples. Writes "
    "DIR/records/certify.csv (one row per input) and results.json[\"certify\"] (the certified "
    "four-way partition and the S_CRI robust selection per eps). Under torchrun the inputs are "
    "sharded over the processes and the records are the same as with one process.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run directory (checkpoint with meta.json)")
    p.add_argument("--sigma", type=float, required=True, help="Gaussian noise level of the smoothing")
    p.add_argument("--eps", type=float, nargs="+", required=True, help="l2 radii to decide")
    p.add_argument("--n0", type=int, default=100, help="selection samples per input")
    p.add_argument("--n", type=int, default=100_000, help="estimation samples per input (maximum with --sequential)")
    p.add_argument("--alpha", type=float, default=0.001, help="failure probability of each certificate")
    p.add_argument("--samples", type=int, default=500, help="size of the class-balanced test subset")
    p.add_argument("--split", default="test", choices=("test", "train"), help="dataset split")
    p.add_argument("--sequential", action="store_true",
                   help="sequential certification (stops once every eps decision is settled)")
    p.add_argument("--batch-size", type=int, default=1000, help="noisy samples per forward pass")
    p.add_argument("--chunk", type=int, default=None,
                   help="inputs per certification call (default: from --n and --batch-size); "
                        "records depend on it through the per-chunk generators")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset and of the noise")
    p.add_argument("--overwrite", action="store_true", help="replace an existing records/certify.csv")


def run(args: argparse.Namespace) -> int:

    from .. import distributed
    from ..checkpoint import load_checkpoint
    from ..data import balanced_subset, load
    from ..errors import ConfigError
    from ..io import update_json
    from ..records import write_records
    from ..smoothing.records import certify_metrics, certify_records, decision_radii
    from ..smoothing.smooth import check_alpha, check_count, check_sigma
    from ..utils import progress, resolve_device
    from ..validate import check_eps

    sigma = check_sigma(args.sigma)
    alpha = check_alpha(args.alpha)
    n0, n = check_count(args.n0, "n0"), check_count(args.n, "n")
    check_count(args.batch_size, "batch_size")
    if args.samples < 1:
        raise ConfigError(f"--samples must be >= 1, got {args.samples}")
    if args.chunk is not None and args.chunk < 1:
        raise ConfigError(f"--chunk must be >= 1, got {args.chunk}")
    eps = [check_eps(e) for e in args.eps]
    run_dir = Path(args.run)
    records_path = run_dir / "records" / "certify.csv"
    if records_path.exists() and not args.overwrite:
        raise ConfigError(f"{records_path} exists; pass --overwrite to replace it")
    device = resolve_device(args.device)
    distributed.init_from_env(device)
    device = distributed.local_device(device)
    model, meta = load_checkpoint(run_dir, device)
    if "dataset" not in meta:
        raise ConfigError(f"{run_dir}/meta.json does not name its dataset")
    data = load(meta["dataset"], args.split, root=meta.get("data_root"))
    idx = balanced_subset(data.y, args.samples, data.num_classes, seed=args.seed)
    x, y = data.x[idx], data.y[idx]

    t0 = time.perf_counter()
    bar = progress(total=len(idx), desc="certify", disable=None if distributed.is_main() else True)
    try:
        cols = certify_records(model, x, y, idx, num_classes=int(meta["num_classes"]), sigma=sigma,
                               eps=eps, n0=n0, n=n, alpha=alpha, batch_size=args.batch_size,
                               sequential=args.sequential, seed=args.seed, chunk=args.chunk,
                               device=device, on_progress=bar.update)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    if distributed.is_main():
        metrics = certify_metrics(cols, eps)
        section = {
            "sigma": sigma, "eps": eps, "radii": decision_radii(eps), "n0": n0, "n": n, "alpha": alpha,
            "samples": len(idx), "split": args.split, "subset": "class-balanced, seeded",
            "seed": args.seed, "sequential": bool(args.sequential), "batch_size": args.batch_size,
            "device": str(device), "world_size": distributed.world_size(), "seconds": seconds,
            "metrics": metrics,
        }
        update_json(run_dir / "results.json", "certify", section)
        # the records last: their presence marks a finished certification
        write_records(records_path, cols)
        lines = [f"abstain certify: {len(idx)} inputs, sigma {sigma:g}, alpha {alpha:g}, "
                 f"{'sequential, ' if args.sequential else ''}mean forward passes "
                 f"{metrics['samples_mean']:.0f}, {seconds:.1f} s"]
        for e in eps:
            m = metrics[f"{e:g}"]
            lines.append(f"  eps {e:g}: certified accuracy {m['rob_acc']:.4f}, robust inaccuracy "
                         f"{m['rob_inacc']:.4f}, abstained {m['abstain']:.4f}, robust selection "
                         f"(S_CRI, 2eps) {m['rob_sel']:.4f}")
        lines.append(f"records: {run_dir / 'records' / 'certify.csv'}")
        print("\n".join(lines))
    return 0
