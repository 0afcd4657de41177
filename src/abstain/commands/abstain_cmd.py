"""``abstain abstain``: abstain models (F, S) and 2-compositional models (eq. 15) from runs.

``abstain abstain --robust RUN --core RUN --selector eri|cri|sr|sn --eps E [E ...]``

* ``--robust RUN``: the run directory (checkpoint) of F, the model that abstains;
* ``--core RUN``: the run directory of the accurate core model of the composition;
* either may instead be your own ``MODULE:FACTORY`` with ``--robust-weights`` /
  ``--core-weights`` FILE, and then ``--data NAME`` (and ``--out``) say which data;
* ``--selector``: S_ERI (eq. 12; robust selection = robustness in the 2ε ball), S_CRI (eq. 13;
  randomized smoothing of F at ``--sigma``, ℓ2 only), S_SR (eq. 16; APGD and APGDconf, τ sweep)
  or S_SN (selection network trained with IBP on the training split, IBP-certified).

Evaluates the test split of the robust model's dataset (``--samples N``: a seeded,
class-balanced subset) at every ε and writes into ``--out`` (default: the robust run):

``records/abstain-<tag>-eps<ε>.csv``       the selector's per-sample columns and the core's
                                           (``core.pred``, ``core.robust@ε``) and the
                                           composition's (``h.pred@ε``, ``h.rob_acc@ε``);
``results.json`` section ``"abstain-<tag>"`` per ε: the abstain metrics (coverage, ``rob_sel``
                                           eq. 14, ``sel_rob_acc``), the core alone, F alone
                                           and the composition (``nat_acc``, sound ``rob_acc``,
                                           the authors' unsound count ``rob_acc_paper``),
                                           the τ sweep for SR/SN;
``abstain_pareto-<tag>.png``, ``composition-<tag>.png`` (and ``sr_ablation.png`` for S_SR) — Fig. 3, 4, 6.

``<tag>`` is the selector (``cri-s<σ>`` for S_CRI with ``--sigma``), so the results of several
selectors on one run live side by side; rerunning one selector needs ``--overwrite``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..abstain_job import AbstainSettings as S
from ..abstain_job import AbstainSettings, CRI_DEFAULTS, SELECTORS, abstain_job, abstain_outputs
from ..attacks import ATTACKS, DEFAULT_ATTACK
from ..errors import ConfigError
from ..outputs import claim
from ..sources import add_data_arguments, add_trust_arguments, is_run_dir, parse_normalize, resolve
from ..utils import resolve_device
from ..validate import check_pixel_eps
from .options import DeprecatedAlias, add_split, default

HELP = "abstain models (robustness indicator, softmax response, selection network) and compositions"
DESCRIPTION = __doc__


def add_arguments(p: argparse.ArgumentParser) -> None:
    m = p.add_argument_group("models (a run directory, or MODULE:FACTORY with its weights and --data)")
    m.add_argument("--robust", required=True, metavar="RUN|MODULE:FACTORY", help="the model F that abstains")
    m.add_argument("--robust-weights", metavar="FILE", help="weights of --robust MODULE:FACTORY")
    m.add_argument("--core", required=True, metavar="RUN|MODULE:FACTORY", help="the core model")
    m.add_argument("--core-weights", metavar="FILE", help="weights of --core MODULE:FACTORY")
    add_data_arguments(m)
    add_trust_arguments(m)
    p.add_argument("--selector", required=True, choices=SELECTORS,
                   help="S_ERI (eq. 12), S_CRI (eq. 13, smoothing), S_SR (eq. 16) or S_SN (eq. 18)")
    p.add_argument("--eps", type=float, nargs="+", required=True, metavar="E", help="radii (pixel space)")
    p.add_argument("--norm", default=default(S, "norm"), choices=("linf", "l2"),
                   help="threat model: the ℓ∞ or ℓ2 ball (pixel space)")
    p.add_argument("--steps", type=int, default=default(S, "steps"), help="attack steps (APGD iterations)")
    p.add_argument("--attack", choices=ATTACKS, default=None,
                   help=f"how F's and the core's robustness is checked (default {DEFAULT_ATTACK}; apgd-ce: "
                        "the paper's protocol)")
    p.add_argument("--tau", type=float, help="threshold τ of S_SR / S_SN for the composition "
                                             "(default 0.9 for SR, 0.5 for SN)")
    p.add_argument("--tau-grid", type=int, default=default(S, "tau_grid"), metavar="N",
                   help="number of thresholds τ in [0, 1) of the SR/SN sweep")
    p.add_argument("--out", metavar="DIR", help="output directory (default: the --robust run)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the records, plots and results.json section of an earlier `abstain abstain`")
    p.add_argument("--samples", type=int, metavar="N", default=default(S, "samples"),
                   help="a seeded, class-balanced subset of N samples of --split (default: all)")
    add_split(p, "compose on")
    p.add_argument("--seed", type=int, default=default(S, "seed"), help="seed of the random starts, of --samples and of S_SN")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when available)")
    p.add_argument("--batch-size", type=int, default=default(S, "batch_size"), metavar="N",
                   help="inputs per batch of the selector and core evaluation (memory)")
    p.add_argument("--eval-batch-size", type=int, dest="batch_size", action=DeprecatedAlias, new="--batch-size",
                   help=argparse.SUPPRESS)
    p.add_argument("--chunk", type=int, metavar="N",
                   help="inputs per resumable chunk, rounded up to a multiple of --batch-size "
                        "(default: --batch-size); a rerun after a kill skips finished chunks")
    s = p.add_argument_group("selection network (--selector sn)")
    s.add_argument("--sn-epochs", type=int, default=default(S, "sn")["epochs"],
                   help="training epochs of the selection network (S_SN)")
    s.add_argument("--sn-samples", type=int, help="train S_SN on a random subset of the training split")
    c = p.add_argument_group("certified indicator (--selector cri)")
    c.add_argument("--sigma", type=float, help="noise level σ (default: the robust run's loss sigma)")
    c.add_argument("--n0", type=int, default=CRI_DEFAULTS["n0"], help="noise samples that pick the class (S_CRI)")
    c.add_argument("--n", type=int, default=CRI_DEFAULTS["n"], help="noise samples that bound its probability (S_CRI)")
    c.add_argument("--alpha", type=float, default=CRI_DEFAULTS["alpha"],
                   help="failure probability of each certificate (S_CRI)")
    c.add_argument("--noise-batch-size", type=int, default=CRI_DEFAULTS["batch_size"], metavar="N",
                   help="noise samples per forward pass (S_CRI)")


def run(args: argparse.Namespace) -> int:
    s = AbstainSettings(selector=args.selector, eps=args.eps, norm=args.norm, steps=args.steps,
                        tau=args.tau, tau_grid=args.tau_grid, samples=args.samples, seed=args.seed,
                        batch_size=args.batch_size, attack=args.attack, chunk=args.chunk, split=args.split,
                        sn={"epochs": args.sn_epochs, "samples": args.sn_samples},
                        cri={"sigma": args.sigma, "n0": args.n0, "n": args.n, "alpha": args.alpha,
                             "batch_size": args.noise_batch_size})
    s.check()
    for e in args.eps:
        check_pixel_eps(e, args.norm)
    device = resolve_device(args.device)
    normalize = parse_normalize(args.normalize)
    common = {"data": args.data, "data_root": args.data_root, "num_classes": args.num_classes,
              "normalize": normalize, "device": device, "random_init": args.random_init,
              "trust_code": args.trust_code}
    if args.out is None and not is_run_dir(args.robust):
        raise ConfigError("--robust MODULE:FACTORY needs --out DIR" if ":" in args.robust else
                          f"--robust {args.robust}: no run directory there (no meta.json)")
    out = Path(args.out or args.robust)
    with claim(out, abstain_outputs(out, s), args.overwrite):
        robust = resolve(args.robust, args.robust_weights, flag="--robust", **common)
        core = resolve(args.core, args.core_weights, flag="--core", **common)
        section = abstain_job(robust, core, out, s, device, allow_batch_dependent=args.allow_batch_dependent)
    for key, entry in section.items():
        if key == "meta":
            continue
        abst, core_m, comp = entry["abstain"], entry["core"], entry["composition"]
        print(f"ε={key}: coverage {abst['coverage']:.3f}  R_rob^sel {abst['rob_sel']:.3f}  "
              f"R_rob^acc(selected) {abst['sel_rob_acc']:.3f} | core nat {core_m['nat_acc']:.3f} "
              f"rob {core_m['rob_acc']:.3f} | composition nat {comp['nat_acc']:.3f} "
              f"rob {comp['rob_acc']:.3f}")
    print(f"wrote {out / 'results.json'} (section 'abstain'), records and plots under {out}")
    return 0
