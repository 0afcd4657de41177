"""``abstain abstain``: abstain models (F, S) and 2-compositional models (eq. 15) from runs.

``abstain abstain --robust RUN --core RUN --selector eri|cri|sr|sn --eps E [E ...]``

* ``--robust RUN``: the run directory (checkpoint) of F, the model that abstains;
* ``--core RUN``: the run directory of the accurate core model of the composition;
* ``--selector``: S_ERI (eq. 12; robust selection = robustness in the 2ε ball), S_CRI (eq. 13;
  randomized smoothing of F at ``--sigma``, ℓ2 only), S_SR (eq. 16; APGD and APGDconf, τ sweep)
  or S_SN (selection network trained with IBP on the training split, IBP-certified).

Evaluates the test split of the robust run's dataset (``--samples N``: a seeded,
class-balanced subset) at every ε and writes into ``--out`` (default: the robust run):

``records/abstain-<selector>-eps<ε>.csv``  the selector's per-sample columns and the core's
                                           (``core.pred``, ``core.robust@ε``) and the
                                           composition's (``h.pred``, ``h.rob_acc``);
``results.json`` section ``"abstain"``     per ε: the abstain metrics (coverage, ``rob_sel``
                                           eq. 14, ``sel_rob_acc``), the core alone, F alone
                                           and the composition (``nat_acc``, sound ``rob_acc``,
                                           the authors' unsound count ``rob_acc_paper``),
                                           the τ sweep for SR/SN;
``abstain_pareto.png``, ``composition.png``  (and ``sr_ablation.png`` for S_SR) — Fig. 3, 4, 6.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from .. import records

HELP = "abstain models (robustness indicator, softmax response, selection network) and compositions"
DESCRIPTION = __doc__


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--robust", required=True, metavar="RUN", help="run directory of the model F that abstains")
    p.add_argument("--core", required=True, metavar="RUN", help="run directory of the core model")
    p.add_argument("--selector", required=True, choices=("eri", "cri", "sr", "sn"))
    p.add_argument("--eps", type=float, nargs="+", required=True, metavar="E", help="radii (pixel space)")
    p.add_argument("--norm", default="linf", choices=("linf", "l2"))
    p.add_argument("--steps", type=int, default=40, help="APGD steps")
    p.add_argument("--tau", type=float, help="threshold τ of S_SR / S_SN for the composition "
                                             "(default 0.9 for SR, 0.5 for SN)")
    p.add_argument("--tau-grid", type=int, default=101, metavar="N",
                   help="number of thresholds τ in [0, 1) of the SR/SN sweep")
    p.add_argument("--out", metavar="DIR", help="output directory (default: the --robust run)")
    p.add_argument("--samples", type=int, metavar="N", help="seeded, class-balanced test subset of N samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--eval-batch-size", type=int, default=512, metavar="B",
                   help="inputs per selector evaluation chunk (memory)")
    s = p.add_argument_group("selection network (--selector sn)")
    s.add_argument("--sn-epochs", type=int, default=60)
    s.add_argument("--sn-samples", type=int, help="train S_SN on a random subset of the training split")
    c = p.add_argument_group("certified indicator (--selector cri)")
    c.add_argument("--sigma", type=float, help="noise level σ (default: the robust run's loss sigma)")
    c.add_argument("--n0", type=int, default=100)
    c.add_argument("--n", type=int, default=10000)
    c.add_argument("--alpha", type=float, default=0.001)
    c.add_argument("--batch-size", type=int, default=1000)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from .. import data as data_mod
    from ..checkpoint import load_checkpoint
    from ..compose import composition_columns
    from ..errors import ConfigError
    from ..io import update_json
    from ..metrics import partition
    from ..records import write_records
    from ..selectors import plots
    from ..selectors.evaluate import (abstain_records, build_selector, candidate, core_records,
                                      summarize, tau_curve)
    from ..utils import resolve_device, seed_everything
    from ..validate import check_eps

    t0 = time.perf_counter()
    device = resolve_device(args.device)
    seed_everything(args.seed)
    eps_list = [check_eps(e) for e in args.eps]
    if any(e == 0 for e in eps_list):
        raise ConfigError("--eps must be > 0")
    if args.tau is not None and not 0 <= args.tau <= 1:
        raise ConfigError(f"--tau must lie in [0, 1], got {args.tau}")
    robust, meta = load_checkpoint(args.robust, device=device)
    core, core_meta = load_checkpoint(args.core, device=device)
    for m in (robust, core):
        for prm in m.parameters():
            prm.requires_grad_(False)
    if core_meta.get("dataset") != meta.get("dataset"):
        raise ConfigError(f"--robust uses dataset {meta.get('dataset')!r} but --core {core_meta.get('dataset')!r}")
    if int(core_meta["num_classes"]) != int(meta["num_classes"]):
        raise ConfigError("--robust and --core have different numbers of classes")
    test = data_mod.load(meta["dataset"], "test", root=meta.get("data_root"))
    idx = torch.arange(len(test))
    if args.samples:
        idx = data_mod.balanced_subset(test.y, args.samples, test.num_classes, seed=args.seed)
    x, y = test.x[idx].to(device), test.y[idx].to(device)
    train = None
    if args.selector == "sn":
        tr = data_mod.load(meta["dataset"], "train", root=meta.get("data_root"))
        train = (tr.x.to(device), tr.y.to(device))
    cri = None
    if args.selector == "cri":
        sigma = args.sigma if args.sigma is not None else (meta.get("loss_params") or {}).get("sigma")
        if sigma is None:
            raise ConfigError("--selector cri needs --sigma (the robust run has no loss sigma)")
        cri = {"num_classes": int(meta["num_classes"]), "sigma": float(sigma), "n0": args.n0, "n": args.n,
               "alpha": args.alpha, "batch_size": args.batch_size}
    out = Path(args.out or args.robust)
    section: dict[str, Any] = {}
    pareto_pts, pareto_curves, comp_pts, abl = {}, {}, {}, {}
    core_pt = None
    for eps in eps_list:
        sel = build_selector(args.selector, robust, eps=eps, norm=args.norm, steps=args.steps, seed=args.seed,
                             tau=args.tau, train=train, sn={"epochs": args.sn_epochs, "samples": args.sn_samples},
                             cri=cri)
        rec = abstain_records(sel, x, y, idx.numpy(), batch_size=args.eval_batch_size)
        crec = core_records(core, x, y, idx.numpy(), eps=eps, norm=args.norm, steps=args.steps, seed=args.seed,
                            batch_size=args.eval_batch_size)
        tau = getattr(sel, "tau", None)
        cand = candidate(args.selector, args.selector, rec, eps, tau)
        cpred, crob = crec["pred"], records.flag(crec, records.ROBUST, eps)
        comp = composition_columns(rec["label"], cand, cpred, crob)
        cols = dict(rec)
        cols.update({"core.pred": cpred, records.column(records.ROBUST, eps, "core"): crob, "h.pred": comp["h_pred"],
                     "h.rob_acc": comp["h_robust_acc"], "h.rob_acc_paper": comp["h_robust_acc_paper"]})
        write_records(out / "records" / f"abstain-{args.selector}-eps{records.eps_text(eps)}.csv", cols)
        lab = rec["label"]
        abst = summarize(args.selector, rec, eps, tau)
        entry: dict[str, Any] = {
            "abstain": abst,
            "core": partition(lab, cpred, crob),
            "robust": {"nat_acc": abst["nat_acc"], "rob_acc": abst["rob_acc"]},
            "composition": {"nat_acc": float(np.mean(comp["h_pred"] == lab)),
                            "rob_acc": float(np.mean(comp["h_robust_acc"])),
                            "rob_acc_paper": float(np.mean(comp["h_robust_acc_paper"])),
                            "coverage": float(np.mean(comp["selected"]))},
        }
        key = f"{eps:g}"
        if args.selector in ("sr", "sn"):
            entry["tau_curve"] = tau_curve(args.selector, rec, eps, points=args.tau_grid)
            pareto_curves[f"{args.selector.upper()} ε={key}"] = [(c["rob_sel"], c["sel_rob_acc"])
                                                                for c in entry["tau_curve"] if c["rob_sel"] > 0]
            if args.selector == "sr":
                for attack, label in (("apgd", "APGD"), ("conf", "APGDconf")):
                    c = tau_curve("sr", rec, eps, attacks=(attack,), points=args.tau_grid)
                    abl[f"{label} ε={key}"] = [(d["rob_sel"], d["sel_rob_acc"]) for d in c if d["rob_sel"] > 0]
        else:
            pareto_pts[f"{args.selector.upper()} ε={key}"] = (abst["rob_sel"], abst["sel_rob_acc"])
        comp_pts[f"composition ε={key}"] = (entry["composition"]["nat_acc"], entry["composition"]["rob_acc"])
        if core_pt is None:
            core_pt = (entry["core"]["nat_acc"], entry["core"]["rob_acc"])
        section[key] = entry
        print(f"ε={key}: coverage {abst['coverage']:.3f}  R_rob^sel {abst['rob_sel']:.3f}  "
              f"R_rob^acc(selected) {abst['sel_rob_acc']:.3f} | core nat {entry['core']['nat_acc']:.3f} "
              f"rob {entry['core']['rob_acc']:.3f} | composition nat {entry['composition']['nat_acc']:.3f} "
              f"rob {entry['composition']['rob_acc']:.3f}")
    plots.abstain_pareto(pareto_pts, pareto_curves, out / "abstain_pareto.png",
                         title=f"{meta['dataset']}: abstain model (S_{args.selector.upper()})")
    plots.composition_plot(comp_pts, core_pt, out / "composition.png",
                           title=f"{meta['dataset']}: composition vs core (core at ε={args.eps[0]:g})")
    if abl:
        plots.sr_ablation(abl, out / "sr_ablation.png")
    section["meta"] = {"robust": str(args.robust), "core": str(args.core), "selector": args.selector,
                       "norm": args.norm, "steps": args.steps, "seed": args.seed, "samples": int(len(idx)),
                       "seconds": time.perf_counter() - t0}
    update_json(out / "results.json", "abstain", section)
    print(f"wrote {out / 'results.json'} (section 'abstain'), records and plots under {out}")
    return 0
