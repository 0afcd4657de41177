"""The report's claims table: one row per claim of the paper (Fig. 1–4, Tables 1–9, the
abstract), how the paper states it, where this project tests it, the measured numbers with
intervals (from each stage's ``results.json``, whose numbers the stage sections recompute from
the records), and a verdict worded as the paper words the claim:
*held*, *held as a trade-off*, *did not hold*, *not shown* (the interval covers zero) or
*not testable here* (and why). docs/reproduce.md lists the same rows.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

from ..io import read_json
from ..stages.partition import TABLE1_RANGE   # the range the table1 ε rule also uses

Verdict = tuple[str, str]          # (numbers, verdict)


def _load(out: Path, stage: str) -> dict | None:
    from . import unreadable  # noqa: PLC0415  cycle: report/__init__ imports this module

    f = out / stage / "results.json"
    if not f.is_file() or unreadable(out, out / stage):
        return None
    try:
        data = read_json(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _pts(v: float) -> str:
    return f"{100 * v:+.2f}"


def _ci(d: dict) -> str:
    """``mean [low, high]`` in points; a mean without an interval (one seed) alone."""
    if not (math.isfinite(d.get("ci95_low", math.nan)) and math.isfinite(d.get("ci95_high", math.nan))):
        return f"{_pts(d['mean'])} (no interval)"
    return f"{_pts(d['mean'])} [{_pts(d['ci95_low'])}, {_pts(d['ci95_high'])}]"


def interval_verdict(d: dict, lower_is_claim: bool = True) -> str:
    """``held`` when the 95% interval lies on the claimed side of 0, ``did not hold`` when it lies
    on the other side, ``not shown`` when it covers 0 (or is undefined)."""
    lo, hi = d.get("ci95_low", math.nan), d.get("ci95_high", math.nan)
    if d.get("n") == 1:    # a paired t-interval over one seed is undefined
        return "not shown (one seed, no interval)"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "not shown (no interval)"
    if lo == hi:
        if d.get("n") in (None, 1):   # one seed (a demo): a bootstrap over one value is no interval
            return "not shown (one seed, no interval)"
        if lo == 0:                   # several seeds, the same difference on each: none
            return f"not shown (no difference on any of {d['n']} seeds)"
    if (hi < 0) if lower_is_claim else (lo > 0):
        return "held"
    if (lo > 0) if lower_is_claim else (hi < 0):
        return "did not hold"
    return "not shown (interval covers 0)"


def tradeoff_verdict(d_nat: float, d_rob: float) -> str:
    """Sec. 7.3 states ERA_RI compositions against TRADES_RI ones as a trade-off (+0.58 natural,
    −2.75 robust): both higher is *held*, natural up and robust down *held as a trade-off*,
    natural down *did not hold*."""
    if d_nat > 0 and d_rob >= 0:
        return "held"
    if d_nat > 0:
        return "held as a trade-off"
    return "did not hold"


def _direction(d: dict) -> str:
    """``higher`` / ``lower`` where the 95% interval lies above / below 0, else why not shown."""
    v = interval_verdict(d, lower_is_claim=False)
    return {"held": "higher", "did not hold": "lower"}.get(v, v.replace("not shown (", "").rstrip(")"))


def tradeoff_interval_verdict(gain: dict, cost: dict, names: tuple[str, str] = ("natural", "robust")) -> str:
    """:func:`tradeoff_verdict` from 95% intervals: the claimed gain (``gain``: natural accuracy
    of a composition, Sec. 7.3; R_rob^acc of an abstain model, Fig. 3) *held* when its interval
    lies above 0 and the cost's (robust accuracy; R_rob^sel) does not lie below, *held as a
    trade-off* when it does, *did not hold* when the gain's interval lies below 0, *not shown*
    when it covers 0; the cost's direction is named beside the last two."""
    g = interval_verdict(gain, lower_is_claim=False)
    c = _direction(cost)
    if g.startswith("not shown (one seed") or g == "not shown (no interval)":
        return g
    if g == "held":
        return "held as a trade-off" if c == "lower" else ("held" if c == "higher" else f"held ({names[1]}: {c})")
    head = f"did not hold ({names[0]} lower)" if g == "did not hold" else f"not shown ({names[0]} interval covers 0)"
    return f"{head}; {names[1]} {c}" if c in ("higher", "lower") else f"{head}; {names[1]}: {c}"


def _finetune(out: Path) -> Verdict | None:
    r = _load(out, "mnist1d-finetune")
    d = r and r.get("era_minus_trades_rob_inacc")
    if not d:
        return None
    return f"ERA − TRADES robust inaccuracy {_ci(d)} points (one β, one γ)", interval_verdict(d)


def _pareto(out: Path) -> Verdict | None:
    r = _load(out, "mnist1d-pareto")
    if not r:
        return None
    m = {k: v for k, v in r.get("matched", {}).items() if k.startswith("era_minus_trades")}
    if not m:
        return "–", "not shown (no robust-accuracy level inside every front, e.g. one point per front in a demo)"
    verdicts = {interval_verdict(v) for v in m.values()}
    held_holm = [k for k, v in m.items() if v.get("holm_reject")]
    text = "; ".join(f"@{k.rsplit('@', 1)[1]}: {_ci(v)}" for k, v in m.items())
    verdict = verdicts.pop() if len(verdicts) == 1 else "mixed across levels"
    return f"{text} (survive Holm: {len(held_holm)} of {len(m)})", _holm_qualified(verdict, held_holm)


def _tau_fronts(out: Path) -> Verdict | None:
    r = _load(out, "mnist1d-pareto")
    if not r:
        return None
    m = {k: v for k, v in r.get("matched", {}).items() if k.startswith(("era_minus_sr", "era_minus_sn"))}
    if not m:
        return "–", "not shown (no matched level on both ERA's front and the τ-fronts)"
    text = "; ".join(f"{k.split('_rob_inacc')[0].replace('_', ' ')} @{k.rsplit('@', 1)[1]}: {_ci(v)}"
                     for k, v in m.items())
    verdicts = {interval_verdict(v) for v in m.values()}
    held_holm = [k for k, v in m.items() if v.get("holm_reject")]
    verdict = verdicts.pop() if len(verdicts) == 1 else "mixed across selectors / levels"
    return f"{text} (survive Holm: {len(held_holm)} of {len(m)})", _holm_qualified(verdict, held_holm)


def _holm_qualified(verdict: str, survivors: list) -> str:
    """A claim the intervals support, but no comparison of which survives Holm's correction
    across the stage's comparisons, is *held* only before that correction."""
    if verdict == "held" and not survivors:
        return "held by the 95% intervals, but no comparison survives Holm's correction"
    return verdict


def _compose(out: Path) -> Verdict | None:
    r = _load(out, "mnist1d-compose")
    if not r or "compose-eri" not in r or "compose-eri-trades" not in r:
        return None
    a, b = r["compose-eri"], r["compose-eri-trades"]
    dn, dr = a["nat_acc"] - b["nat_acc"], a["rob_acc"] - b["rob_acc"]
    return (f"ERA_RI − TRADES_RI compositions: natural {_pts(dn)}, sound robust {_pts(dr)} points "
            "(paper: +0.58, −2.75)", tradeoff_verdict(dn, dr))


def _compose_2eps(out: Path) -> Verdict | None:
    r = _load(out, "mnist1d-compose-2eps")
    if not r or "era_minus_trades_nat_acc@2eps" not in r or "era_minus_trades_rob_acc@2eps" not in r:
        return None
    dn, dr = r["era_minus_trades_nat_acc@2eps"], r["era_minus_trades_rob_acc@2eps"]
    return (f"ERA_RI − TRADES_RI compositions (fine-tuned at 2ε, composed at ε): natural {_ci(dn)}, sound robust "
            f"{_ci(dr)} points (paper: +0.58, −2.75)", tradeoff_interval_verdict(dn, dr))


def _paired_verdict(d: dict) -> str:
    """:func:`interval_verdict`, and a claim that the interval supports is *held* only where the
    paired per-point McNemar test agrees (p < 0.05)."""
    v = interval_verdict(d)
    if v == "held" and not d.get("mcnemar_p", 1.0) < 0.05:
        return "not shown (McNemar p ≥ 0.05)"
    return v


def _certify(out: Path) -> Verdict | None:
    r = _load(out, "mnist1d-certify")
    ds = r and {k: v for k, v in r.items() if k.startswith("cra_minus_noise")}
    if not ds:
        return None
    text = "; ".join(f"σ {k.rsplit('@', 1)[1]}: {_ci(v)}, McNemar p {v['mcnemar_p']:.3g}" for k, v in ds.items())
    verdicts = {_paired_verdict(v) for v in ds.values()}
    return text, verdicts.pop() if len(verdicts) == 1 else "mixed across σ"


def _pct_seeds(row: dict, key: str) -> str:
    vals = row[key]
    return (f"{100 * sum(vals) / len(vals):.1f}% mean, {100 * row[f'{key}_median']:.1f}% median "
            f"over {_seeds(len(vals))}")


def _seeds(n: int) -> str:
    """``"1 seed"`` / ``"n seeds"``."""
    return f"{n} seed{'s' if n != 1 else ''}"


def _n_seeds(row: dict) -> str:
    return _seeds(len(row["seeds"]))


def fig1_verdict(era: list[float], trades: list[float]) -> str:
    """Fig. 1 (Sec. 1): ERA has 0.0% robust inaccuracy where TRADES has 1.6%. Per seed (both
    models see the seed's data draw) ERA *removes* TRADES' robust-inaccurate points when its
    robust inaccuracy is 0 or below TRADES'; *held* when that is so on every seed, *did not hold*
    on none, *held on k of n seeds* between, *not shown* where TRADES has none to remove."""
    if not era or len(era) != len(trades):
        return "not shown (ERA and TRADES not on the same seeds)"
    if all(t == 0.0 for t in trades):
        return "not shown (TRADES has no robust-inaccurate points to remove)"
    k = sum(e == 0.0 or e < t for e, t in zip(era, trades))
    if k == len(era):
        return "held"
    return "did not hold" if k == 0 else f"held on {k} of {len(era)} seeds"


def _fig1(out: Path) -> Verdict | None:
    """The Fig. 1 row from fig1's ``per_seed`` (:func:`abstain.stages.fig1.seed_summary`): the
    paper-text protocol (test set) judges the claim; the authors' protocol (training set, where
    the paper's numbers come from) gives TRADES' collapse rate and the lr 0.01 diagnosis."""
    r = _load(out, "fig1")
    if not r:
        return None
    ps = r.get("per_seed")
    if not isinstance(ps, dict):
        return "–", "not shown (fig1's results.json has no per-seed numbers: rerun fig1)"
    parts, verdict = [], None
    for protocol, era, trades in (("paper-text protocol, test set", "text-era", "text-trades"),
                                  ("authors' protocol, training set", "era", "trades")):
        if era not in ps or trades not in ps:
            continue
        e, t = ps[era], ps[trades]
        parts.append(f"{protocol}: robust inaccuracy ERA {_pct_seeds(e, 'rob_inacc')} (0.0% on "
                     f"{e['n_zero_rob_inacc']} of {len(e['rob_inacc'])}), TRADES {_pct_seeds(t, 'rob_inacc')}; "
                     f"TRADES collapsed on {len(t['collapsed'])} of {_n_seeds(t)}")
        if verdict is None:
            verdict = fig1_verdict(e["rob_inacc"], t["rob_inacc"])
            if protocol.startswith("authors"):
                verdict += " (the authors' protocol only; the paper-text protocol did not run)"
    lr = ps.get("trades-lr0.01")
    if lr:
        parts.append(f"TRADES at lr 0.01 (authors' protocol): {_pct_seeds(lr, 'rob_inacc')}, collapsed on "
                     f"{len(lr['collapsed'])} of {_n_seeds(lr)}")
    if verdict is None:
        return "–", "not shown (no ERA and TRADES runs in fig1)"
    return "; ".join(parts) + " (paper: ERA 0.0%, TRADES 1.6%)", verdict


def _fig3_study(r: dict) -> tuple[str, str] | None:
    """One study's Fig. 3 numbers and verdict from ``<study>-abstain``'s ``fig3``
    (:func:`abstain.stages.abstain_models.fig3_comparisons`)."""
    f = r.get("fig3")
    if not isinstance(f, dict) or "era_minus_trades_ri_sel_rob_acc" not in f:
        return None
    acc, sel = f["era_minus_trades_ri_sel_rob_acc"], f["era_minus_trades_ri_rob_sel"]
    n = len(f.get("seeds", [])) or 1
    text = f"ERA_RI − TRADES_RI: R_rob^acc {_ci(acc)}, R_rob^sel {_ci(sel)} points ({_seeds(n)})"
    verdict = f"vs TRADES_RI: {tradeoff_interval_verdict(acc, sel, ('R_rob^acc', 'R_rob^sel'))}"
    for kind, label in (("sr", "S_SR"), ("sn", "S_SN")):
        d = next((v for k, v in f.items() if k.startswith("era_ri_above_") and k.endswith(f"_{kind}_front")), None)
        if d is None:
            continue
        beyond = int(d.get("beyond_front", 0))
        gaps = f"{_ci(d)}" if d.get("n", 0) else "–"
        text += f"; ERA_RI above the {label} τ-front by {gaps} points R_rob^acc"
        text += f" ({_seeds(beyond)} beyond the front's robust selection)" if beyond else ""
        v = interval_verdict(d, lower_is_claim=False) if d.get("n", 0) else "held (beyond the front on every seed)"
        verdict += f"; vs {label}: {v}"
    return text, verdict


def _fig3(out: Path) -> Verdict | None:
    """The Fig. 3 row: Sec. 7.2 states that ERA_RI "consistently improves robust accuracy" R_rob^acc
    over TRADES_RI (+1.18% at −3.78% robust selection: a trade-off, "close to optimal") and
    "mostly improves both robust selection and robust accuracy" against S_SR and S_SN."""
    parts, verdicts = [], []
    for stage, label in (("digits-abstain", "digits"), ("mnist1d-abstain", "MNIST-1D")):
        r = _load(out, stage)
        if not r:
            continue
        got = _fig3_study(r)
        if got is None:
            parts.append(f"{label}: –")
            verdicts.append(f"{label}: not shown (results.json has no fig3 comparisons: rerun {stage})")
            continue
        parts.append(f"{label}: {got[0]}")
        verdicts.append(f"{label}: {got[1]}")
    if not parts:
        return None
    return "; ".join(parts) + " (paper, CIFAR-10: +1.18 R_rob^acc at −3.78 R_rob^sel)", " — ".join(verdicts)


def table1_verdict(rob_inacc: float) -> str:
    """Tables 1 / 8: adversarially trained models have 1–8% robust inaccuracy."""
    lo, hi = TABLE1_RANGE
    if lo <= rob_inacc <= hi:
        return "held"
    return f"did not hold ({100 * rob_inacc:.2f}%: {'below 1' if rob_inacc < lo else 'above 8'}%)"


def _partition(out: Path) -> Verdict | None:
    """The Tables 1 / 8 row from ``<study>-partition``'s results.json: the robust inaccuracy of
    the TRADES model trained at the study ε (key ``trades``), against [1%, 8%]. A study whose ε was
    chosen by the ``table1`` rule (TRADES' robust inaccuracy inside that range) holds by
    construction, and the row says so."""
    parts, verdicts = [], []
    for stage, label in (("digits-partition", "digits"), ("mnist1d-partition", "MNIST-1D")):
        r = _load(out, stage)
        if not r or "trades" not in r:
            continue
        meta = r.get("meta", {})
        eps, ri = meta.get("eps"), r["trades"]["rob_inacc"]
        sweep = {k: v["rob_inacc"] for k, v in r.items() if k.startswith("trades@") and isinstance(v, dict)}
        rule = (meta.get("config") or {}).get("eps_rule") or ("table1" if "Table 1" in str(meta.get("rule")) else "")
        n_seeds = len(meta.get("seeds", [])) or 1
        text = (f"{label}: TRADES at the study ε∞ = {eps:g}: {100 * ri:.2f}% robust inaccuracy "
                f"({meta.get('eval', 'APGD-CE')}, test set, {_seeds(n_seeds)})")
        if len(sweep) > 1:
            text += (f", {100 * min(sweep.values()):.2f}–{100 * max(sweep.values()):.2f}% over ε∞ "
                     f"{min(float(k.split('@')[1]) for k in sweep):g}–{max(float(k.split('@')[1]) for k in sweep):g}")
        parts.append(text)
        v = table1_verdict(ri)
        if rule == "table1" and v == "held" and meta.get("chosen_eps") == eps:
            v = "held by construction (its ε was chosen to put TRADES in 1–8%)"
        verdicts.append(f"{label}: {v}")
    if not parts:
        return None
    return "; ".join(parts) + " (paper: 1–8%)", "; ".join(verdicts)


# (claim, how the paper states it, where tested, reader or the reason it is not testable here)
def _abstract(out: Path) -> Verdict | None:
    """The abstract's claim on the compositions: within a natural-accuracy loss of 0.5 / 1 point
    against the core, ERA's best composition has a higher sound robust accuracy than the core
    (*held* when the lower end of its 95% interval is above the core's robust accuracy)."""
    r = _load(out, "mnist1d-pareto")
    if not r or "core" not in r or not r.get("budget"):
        return None
    core = r["core"]["rob_acc"]
    budget = r["budget"]
    shown = [k for k in ("era@0.5", "era@1.0", "trades@0.5", "trades@1.0") if k in budget]
    if not any(k.startswith("era@") for k in shown):
        return "–", "not shown (no ERA composition within the natural-accuracy budget)"
    text = "; ".join(f"{k.replace('@', ' within ')} pt: {100 * budget[k]['mean']:.2f}% "
                     f"[{100 * budget[k]['ci95_low']:.2f}, {100 * budget[k]['ci95_high']:.2f}]" for k in shown)
    text += f" sound robust accuracy (core {100 * core:.2f}%)"
    above = [k for k in shown if k.startswith("era@") and budget[k]["ci95_low"] > core]
    return text, "held" if above else "not shown (interval reaches the core's robust accuracy)"


CLAIMS: list[tuple[str, str, str, Callable[[Path], Verdict | None] | str]] = [
    ("Fig. 1", "on the 3-Gaussian toy data ERA removes the robust-inaccurate points TRADES keeps",
     "fig1 (gauss3, paper-text and authors' protocols)", _fig1),
    ("Table 1 / 8", "robust inaccuracy of adversarially trained models is 1–8% (CIFAR-10/100)",
     "digits-partition, mnist1d-partition (miniature; TRADES from scratch at the study ε); paper-records "
     "(its own section, the authors' records)", _partition),
    ("Fig. 2 / Table 5", "ERA lowers robust inaccuracy at a small cost of robust accuracy, along a front",
     "mnist1d-pareto (matched robust accuracy, 3 pre-training seeds)", _pareto),
    ("Table 5 (one point)", "ERA (β = 1) vs TRADES (γ = 6) fine-tunes", "mnist1d-finetune (5 seeds)", _finetune),
    ("Tables 2 / 3", "CRA lowers certified robust inaccuracy against Gaussian-noise training",
     "mnist1d-certify (noise vs CRA fine-tunes of a TRADES model)", _certify),
    ("Fig. 3", "ERA_RI raises robust accuracy R_rob^acc over TRADES_RI at some robust selection (a trade-off) and "
     "improves both against S_SR / S_SN", "digits-abstain, mnist1d-abstain (S_SR / S_SN of the TRADES model, "
     "their τ-fronts; paired over fine-tune seeds)", _fig3),
    ("Fig. 3 on Fig. 2's axes", "ERA fine-tunes reach lower robust inaccuracy than softmax response or a selection "
     "network on a TRADES model", "mnist1d-pareto (ERA's front vs the S_SR / S_SN τ-fronts of TRADES γ = 6, "
     "matched robust accuracy)", _tau_fronts),
    ("Tables 4 / 6, Fig. 4, Sec. 7.3", "ERA_RI compositions: +0.58 natural, −2.75 robust vs TRADES_RI (a trade-off)",
     "mnist1d-compose (robust models fine-tuned at ε)", _compose),
    ("Sec. 7.3 (the paper's setup)", "the same comparison with the robust models fine-tuned at 2ε, composed at ε",
     "mnist1d-compose-2eps (3 pre-training seeds)", _compose_2eps),
    ("Tables 4, 5, 9; MTSD (paper scale)", "CIFAR-10/100 and MTSD numbers",
     "cifar10-table4, cifar10-table5, cifar100-table9, mtsd, paper-records",
     "not testable here: paper scale needs the datasets and a GPU (--scale paper)"),
    ("Abstract", "robustness improves without accuracy loss (compositions keep the core's natural accuracy)",
     "mnist1d-pareto budget (best sound robust accuracy within 0.5 / 1 point of the core)", _abstract),
]


def blocks(out: Path) -> list[dict]:
    """The claims table of the run directory ``out``."""
    rows = []
    for claim, stated, where, how in CLAIMS:
        got = how(Path(out)) if callable(how) else None
        if callable(how) and got is None:
            numbers, verdict = "–", "not run in this directory"
        elif got is None:
            numbers, verdict = "–", str(how)
        else:
            numbers, verdict = got
        rows.append([claim, stated, where, numbers, verdict])
    return [{"kind": "table", "caption": "The paper's claims: how the paper states each, where it is tested, the "
             "measured numbers (95% intervals over seeds, one dataset draw) and the verdict in the paper's wording",
             "columns": ["claim", "the paper", "tested in", "measured", "verdict"], "rows": rows, "paper": None}]


__all__ = ["blocks", "CLAIMS", "interval_verdict", "tradeoff_verdict", "tradeoff_interval_verdict", "fig1_verdict",
           "table1_verdict"]
