"""``abstain certify``: randomized-smoothing certification of a run's model on a test subset."""
from __future__ import annotations

import argparse

from .. import distributed
from ..jobs import CertifySettings as S
from ..jobs import CertifySettings, certify_job, certify_outputs
from ..outputs import claim
from ..sources import add_arguments as add_source_arguments
from ..sources import from_args, out_of
from ..utils import resolve_device
from .options import DeprecatedAlias, add_split, default

HELP = "certify a model with randomized smoothing (Cohen et al.; optional sequential test)"
DESCRIPTION = (
    "Certify the smoothed classifier of a model (--run DIR, or your own --model MODULE:FACTORY "
    "--weights FILE --data NAME --out DIR) on a seeded, "
    "class-balanced subset of its dataset's test split: Cohen et al.'s CERTIFY (N0 selection "
    "samples, N estimation samples, one-sided Clopper-Pearson bound at level alpha), or with "
    "--sequential the sequential test that stops as soon as every asked radius (and its double, "
    "for robust selection) is decided, at the same alpha with at most N samples. Writes "
    "DIR/records/certify.csv (one row per input) and results.json[\"certify\"] (the certified "
    "four-way partition and the S_CRI robust selection per eps). Under torchrun the inputs are "
    "sharded over the processes and the records are the same as with one process.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_source_arguments(p, out_help="output directory (records/ and results.json; default: the --run directory)")
    c = p.add_argument_group("smoothing")
    c.add_argument("--sigma", type=float, required=True, help="Gaussian noise level of the smoothing")
    c.add_argument("--eps", type=float, nargs="+", required=True, help="l2 radii to decide")
    c.add_argument("--n0", type=int, default=default(S, "n0"), help="selection samples per input")
    c.add_argument("--n", type=int, default=default(S, "n"),
                   help="estimation samples per input (maximum with --sequential)")
    c.add_argument("--alpha", type=float, default=default(S, "alpha"), help="failure probability of each certificate")
    c.add_argument("--sequential", action="store_true",
                   help="sequential certification (stops once every eps decision is settled)")
    r = p.add_argument_group("run")
    r.add_argument("--samples", type=int, default=default(S, "samples"),
                   help="certify a seeded, class-balanced subset of N samples of --split (default 500, not "
                        "all as in evaluate: each input costs up to n0 + n forward passes)")
    add_split(r, "certify")
    r.add_argument("--noise-batch-size", type=int, default=default(S, "batch_size"), dest="batch_size",
                   metavar="N", help="noise samples per forward pass")
    r.add_argument("--batch-size", type=int, dest="batch_size", action=DeprecatedAlias, new="--noise-batch-size",
                   help=argparse.SUPPRESS)
    r.add_argument("--chunk", type=int, default=None,
                   help="inputs per certification call (default: from --n and --noise-batch-size); "
                        "records depend on it through the per-chunk generators")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    r.add_argument("--seed", type=int, default=default(S, "seed"), help="seed of the subset and of the noise")
    r.add_argument("--overwrite", action="store_true", help="replace an existing records/certify.csv")


def run(args: argparse.Namespace) -> int:
    s = CertifySettings(sigma=args.sigma, eps=args.eps, n0=args.n0, n=args.n, alpha=args.alpha,
                        samples=args.samples, split=args.split, sequential=args.sequential,
                        batch_size=args.batch_size, chunk=args.chunk, seed=args.seed)
    s.check()
    device = resolve_device(args.device)
    out = out_of(args)
    with claim(out, certify_outputs(out), args.overwrite):
        source, out = from_args(args)
        res = certify_job(source, out, s, device, overwrite=args.overwrite,
                          allow_batch_dependent=args.allow_batch_dependent)
    if distributed.is_main():
        m = res["metrics"]
        lines = [f"abstain certify: {res['samples']} inputs, sigma {res['sigma']:g}, alpha {res['alpha']:g}, "
                 f"{'sequential, ' if res['sequential'] else ''}mean forward passes "
                 f"{m['samples_mean']:.0f}, {res['seconds']:.1f} s"]
        for e in res["eps"]:
            me = m[f"{e:g}"]
            lines.append(f"  eps {e:g}: certified accuracy {me['rob_acc']:.4f}, robust inaccuracy "
                         f"{me['rob_inacc']:.4f}, abstained {me['abstain']:.4f}, robust selection "
                         f"(S_CRI, 2eps) {me['rob_sel']:.4f}")
        lines.append(f"records: {res['records']}")
        print("\n".join(lines))
    return 0
