"""The default robustness attack: a margin attack aimed at the class that is easiest to reach.

Robust inaccuracy (paper eq. 3) counts wrong predictions on which the attack found no flip,
so every flip it misses makes a non-robust error look robust. APGD-CE (the paper's
protocol, Section 7) misses many flips that exist just past the exact flip radius; the
ensemble of :func:`abstain.attacks.is_robust` finds them but runs 1 + 1 + (K - 1) attacks
to the end on every robust point. This attack finds them at 1.1-1.9 times the work of one
APGD-CE run on robust points (less where bounds or early flips end it):

1. **Proof** (:mod:`abstain.attacks.bounds`): points whose margin is provably positive
   on ``B^p_ε(x) ∩ [0, 1]^d`` are robust and not attacked (nothing is skipped otherwise).
2. **Ranking**: for the ``T`` classes with the highest clean logits (``T = min(K-1, 9)``)
   one gradient of the targeted margin ``m_t = z_t - z_y`` at x gives its linearisation
   (the first target's from one forward-backward pass, the other ``T - 1`` from one shared
   forward pass and ``T - 1`` backward passes through its graph); its maximiser over the ball ∩ box is the corner
   ``c_t = x + argmax_δ ∇m_t·δ`` (ℓ∞: every coordinate at the end of
   ``[max(0, x_i-ε), min(1, x_i+ε)]`` its gradient points to; ℓ2: ``x + ε·∇/||∇||``
   projected). The corners are evaluated (T forward passes): a corner that flips ends the
   attack for that point (on affine models the best corner is the exact optimum of the
   ℓ∞ problem), the others rank the targets by the margin reached there.
3. **Main run**: ``4·steps // 5`` steps of APGD (step 2ε, momentum 0.75, the checkpoints
   of Croce & Hein 2020) on the untargeted DLR loss (Croce & Hein 2020, eq. 6: the logit
   margin to the strongest other class, which re-targets at every step, over a scale),
   started at the best corner, early stop on flipped points. (On the small ReLU networks
   of ``tests/test_attacks_oracle.py`` the plain margin stalled on points where DLR flips.)
4. **Follow-ups** on the survivors only, ``steps // 5`` steps each: APGD on the targeted
   margin towards the 2nd- and then the 3rd-ranked class from their corners, then
   APGD-DLR from a random point of the ball (seeded by the generator's seed and the
   sample id), which reaches flip regions the corners miss. :data:`PLAN` lists these runs.
   A point whose best margin so far is above :data:`FAR` (0.5) × its clean margin gets a
   short follow-up instead (``steps // 40`` steps, at least 1; decided before each follow-up, so one
   that brings it within 0.5× gives it the full later ones). The follow-ups that flipped
   MILP cases of ``tests/test_attacks_oracle.py`` started at ratios ≤ 0.43; the
   AutoAttack flip on the 1-D ResNet-BN of ``tests/test_attacks_autoattack.py`` starts at
   0.87 after the main run, and a short follow-up (0.18, with 1 or 2 steps alike), then a full one (0.09) bring it
   within reach of the diversity rounds, as the full ones did (0.08); dropping the
   follow-ups there instead lost it.
5. **Start diversity** (:mod:`abstain.attacks.diversity`) on the survivors whose smallest
   margin reached is thin (≤ 0.3 × its clean margin): 12 more runs of ``steps // 10``
   steps on the targeted margin towards the 1st/2nd/3rd-ranked class from random points
   and random vertices of the ball (where ≤ 0.1×, 6 more and one towards each of the
   4th- to 9th-ranked classes); points with a larger margin get nothing extra.

Cost on a point that stays robust and is not proven, in forward passes (a backward pass
counts 2) for T = 9 and 40 steps: 1 (clean logits) + 29 (ranking: 3 + 1 for the first
target, 1 + 2·8 + 8 for the others) + 97 (main run, 3 per step plus the last iterate's
forward) + 25 per full or 4 per short follow-up + 1 (the caller's check): 203, 1.65× the
123 of APGD-CE-40, where all follow-ups are full, 140 (1.14×) where all are short; plus
the diversity rounds on thin points. Counted on the bench's robust points
(``bench/attacks.py`` models; each run's margin comes from the logits of its own last
evaluation, no extra pass): 1.45× APGD-CE on the digits CNN at ε = 0.05 (1.28× without
diversity), 1.81× on the PGD-AT MNIST-1D CNN at ε = 0.02 (1.35×); ``tests/test_attacks_strong.py``
counts it on an untrained CNN (≤ 2.0; 1.19). Every step of
:mod:`abstain.attacks.core` is deterministic and per sample: nothing depends on the
batch. The caller (:func:`abstain.attacks.is_robust`) re-checks every candidate with a
fresh forward pass after projecting it onto the ball ∩ box.
"""
from __future__ import annotations

import torch
from torch import nn

from .apgd import MOMENTUM, RHO
from .bounds import certified
from .core import Checkpoints, _bview, attack, project, random_start
from .diversity import diversify, margin_to_flip, thin
from .objectives import TargetedMargin


MAX_TARGETS = 9          # ranked classes (as AutoAttack's APGD-T)
RESTART_SALT = 0x5EED    # mixed into the seed of the random starts
EXTRA_FRACTION = 0.1     # steps of each extra run on thin points (abstain.attacks.diversity)
FAR = 0.5                # a follow-up is short where the best margin so far is > FAR × the clean margin
SHORT_FRACTION = 0.025   # steps of a short follow-up (40 -> 1 instead of 8; at least 1)
# The runs, in order, each on the points not yet flipped: (objective, rank of the target or
# None for untargeted, start, fraction of ``steps``). Targeted runs use the logit margin
# z_t - z_y; "corner" is the ranked target's corner (the best one when untargeted).
PLAN: tuple[tuple[str, int | None, str, float], ...] = (
    ("dlr", None, "corner", 0.8),      # main run: re-targets to the strongest other class
    ("margin", 1, "corner", 0.2),      # the 2nd-ranked class
    ("margin", 2, "corner", 0.2),      # the 3rd-ranked class (the corner ranking can misorder them)
    ("dlr", None, "random", 0.2),      # another basin than the corners'
)
# Other splits of the budget (two random starts and no targeted run; four runs of steps // 8;
# a 24- or 30-step main run with targeted runs from random starts; a targeted main run)
# changed the MILP agreement at 1.1r by at most 1 in 300 cases and the digits robust counts
# at ε and 2ε by at most 1 in 450; follow-ups of steps // 5 leave the most room under 2×.
# The run towards the 3rd-ranked class, paid for by a main run of 4·steps // 5 instead of
# steps (same work, 1.71× APGD-CE), finds a MILP case at 1.1r that the other runs miss from
# every start (166 -> 167 of 169); a second random DLR start, or two of steps // 10, found
# no further case; of the two left, one flips only from ~20 % of random starts and one from
# 0.2 % of the ball's vertices (no run of this attack or of the ensemble finds it).
# FAR / SHORT_FRACTION (stop 31): follow-ups of steps // 40 on points farther than 0.5× their
# clean margin changed no verdict of the oracle, diversity and AutoAttack tests (each point
# compared) and cut the counted cost on the bench's robust points from 1.82 to 1.45 (digits)
# and 2.13 to 1.81 (MNIST-1D; steps // 20: 1.50 and 1.86, same verdicts). FAR = 0.4 lost a
# MILP case at 1.02r (its follow-up starts at 0.43); a main run of 24 or 28 steps instead of
# 32 lost an affine ℓ2 case at 1.02r (179/180).


def _targeted_grads(model: nn.Module, x: torch.Tensor, pred: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """``∇_x (z_t - z_y)`` at x for every column ``t`` of ``tgt`` (N, J): (J, N, ...), from
    ONE forward pass and J backward passes through its graph (the graph is kept between
    them), not J forward-backward passes."""
    z = x.detach().requires_grad_(True)
    out = []
    with torch.enable_grad():
        logits = model(z)
        zy = logits.gather(1, pred.view(-1, 1))
        for j in range(tgt.shape[1]):
            m = logits.gather(1, tgt[:, j:j + 1]) - zy
            g, = torch.autograd.grad(m.sum(), z, retain_graph=j < tgt.shape[1] - 1)
            out.append(g.detach())
    return torch.stack(out)


def linear_corner(x: torch.Tensor, grad: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """The maximiser of ``grad·(x' - x)`` over ``B^p_ε(x) ∩ [0, 1]^d``: exact for ℓ∞
    (per coordinate, the end of the feasible interval the gradient points to; 0-gradient
    coordinates stay); for ℓ2 the ball's maximiser ``x + ε·g/||g||_2`` clipped to the box."""
    if norm == "linf":
        hi = (x + eps).clamp(max=1.0)
        lo = (x - eps).clamp(min=0.0)
        return torch.where(grad > 0, hi, torch.where(grad < 0, lo, x))
    n = grad.flatten(1).norm(dim=1).clamp_min(1e-30)
    return project(x + eps * grad / _bview(n, grad), x, eps, norm)


def rank_targets(model: nn.Module, x: torch.Tensor, pred: torch.Tensor, logits: torch.Tensor, *,
                 eps: float, norm: str, targets: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Targets of each sample, best first, with their linearised corners.

    Returns ``(order (N, T) class indices, corners (T, N, ...) ordered alike, flipped (N,)
    bool: some corner already changes the prediction, and the corner that does is first)``.
    The best target is the one whose corner reaches the largest value of ``z_t - z_y``.
    The target with the highest clean logit is tried first (one forward-backward pass and
    one forward pass at its corner); a sample whose corner flips is not linearised further
    (its later corners stay x and rank last), so non-robust points cost little. The others
    get the gradients of the remaining ``T - 1`` margins from one forward pass and ``T - 1``
    backward passes, and their corners are evaluated (``T - 1`` forward passes per sample): ``1 + 2T + T + 1`` forward units instead of ``4T`` (29 instead of 36 for
    T = 9). Each sample's result depends on that sample alone: a corner that flips comes
    first whichever others were evaluated.
    """
    cand = logits.scatter(1, pred.view(-1, 1), float("-inf")).topk(targets, dim=1).indices
    corners = x.detach().unsqueeze(0).repeat((targets,) + (1,) * x.dim())
    score = torch.full((x.shape[0], targets), float("-inf"), dtype=logits.dtype, device=x.device)
    flips = torch.zeros((x.shape[0], targets), dtype=torch.bool, device=x.device)
    todo = torch.arange(x.shape[0], device=x.device)
    for cols in (slice(0, 1), slice(1, targets)):
        # a sample with a flipping first corner needs no further targets (its attack is over)
        if cols.start > 0:
            todo = todo[~flips[todo, 0]]
        n_j = len(range(targets)[cols])
        if todo.numel() == 0 or n_j == 0:
            break
        xs, ps, t = x[todo], pred[todo], cand[todo, cols]
        grads = _targeted_grads(model, xs, ps, t)                               # (J, n, ...)
        c = torch.stack([linear_corner(xs, g, eps, norm) for g in grads])      # (J, n, ...)
        corners[cols, todo] = c
        with torch.no_grad():   # one batch per target (the memory of the first target's pass)
            z = torch.stack([model(cj) for cj in c])                           # (J, n, K)
        zt = z.gather(2, t.t().unsqueeze(2)).squeeze(2)
        zy = z.gather(2, ps.view(1, -1, 1).expand(n_j, -1, 1)).squeeze(2)
        score[todo, cols] = (zt - zy).t()
        flips[todo, cols] = (z.argmax(dim=2) != ps.view(1, -1)).t()
    # a corner that flips first (whatever its target), then by the margin reached
    key = torch.where(flips, torch.full_like(score, float("inf")), score)
    key = torch.nan_to_num(key, nan=float("-inf"))
    perm = key.argsort(dim=1, descending=True, stable=True)
    order = cand.gather(1, perm)
    n_idx = torch.arange(x.shape[0], device=x.device)
    corners = corners[perm.t(), n_idx.view(1, -1)]
    return order, corners, flips.any(dim=1)


def best_rows(sel: torch.Tensor, margin: torch.Tensor, success: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For rows ``sel`` (point indices, repeats allowed) with the margin and success of each
    row: ``(points, row, flipped)``, the distinct points, the first row of each that flips,
    else its first row of smallest margin (NaN counts as +inf), and whether one flips."""
    pts, inv = torch.unique(sel, return_inverse=True)
    key = torch.where(success, torch.full_like(margin, float("-inf")), torch.nan_to_num(margin, nan=float("inf")))
    low = torch.full((pts.numel(),), float("inf"), dtype=key.dtype, device=key.device)
    low = low.scatter_reduce(0, inv, key, "amin")
    r = torch.arange(sel.numel(), device=sel.device)
    cand = torch.where(key == low[inv], r, sel.numel())
    row = torch.full((pts.numel(),), sel.numel(), dtype=r.dtype, device=r.device).scatter_reduce(0, inv, cand, "amin")
    return pts, row, success[row]


def strong_candidates(model: nn.Module, x: torch.Tensor, pred: torch.Tensor, logits: torch.Tensor, *,
                      eps: float, norm: str, steps: int, ids: torch.Tensor,
                      targets: int | None = None, use_bounds: bool = True, seed: int = 0,
                      diversity: bool = True, bounds: str = "ibp") -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate adversarial inputs for the prediction ``pred`` at ``x`` (see module doc).

    Returns ``(x_cand, proven)``: ``x_cand`` (N, ...) in ball ∩ box, the attack's best
    point per sample; ``proven`` (N,) bool, the points the bounds prove robust (their
    candidate is x; for the others the point of smallest margin reached, or a flip).
    ``seed`` and the sample ids ``ids`` fix the random starts. ``diversity=False`` leaves
    out the extra starts on thin points (:mod:`abstain.attacks.diversity`; for comparisons).
    ``bounds`` picks the proof (:func:`abstain.attacks.bounds.margin_lower_bound`: ``"ibp"``,
    or the slower ``"crown"`` / ``"crown-full"``, which on the study models proves no more).
    The caller re-checks the candidates with a fresh forward pass.
    The model is in eval mode with frozen parameters (the caller's :func:`frozen_eval`).
    """
    n, k = x.shape[0], logits.shape[1]
    x_cand = x.detach().clone()
    proven = torch.zeros(n, dtype=torch.bool, device=x.device)
    if use_bounds:
        cert = certified(model, x, pred, logits, eps, norm, bounds)
        if cert is not None:
            proven = cert
    todo = torch.nonzero(~proven).flatten()
    n_t = min(k - 1, MAX_TARGETS if targets is None else targets)
    if todo.numel() == 0 or n_t < 1:
        return x_cand, proven
    xs, ps, zs, ids_s = x[todo], pred[todo], logits[todo], ids[todo]
    order, corners, flipped = rank_targets(model, xs, ps, zs, eps=eps, norm=norm, targets=n_t)
    cand = corners[0].clone()
    alive = ~flipped
    # the smallest margin z_y - max_t z_t reached so far (cand holds its point)
    best_margin = torch.full((xs.shape[0],), float("inf"), dtype=zs.dtype, device=x.device)

    def run(sel: torch.Tensor, loss: object, y: torch.Tensor, start: torch.Tensor, n_steps: int) -> None:
        """``n_steps`` of APGD on the rows ``sel`` of the survivors (a point may have several
        rows: several starts or targets in one batch); per point, a flipping row, else the
        row of smallest margin, updates its candidate."""
        if sel.numel() == 0 or n_steps < 1:
            return
        res = attack(model, xs[sel], y, eps=eps, norm=norm, steps=n_steps, loss=loss, step_size=None,
                     momentum=MOMENTUM, checkpoints=Checkpoints(n_steps, RHO), random_init=False,
                     x_init=start, early_stop=True, sample_ids=ids_s[sel], return_result=True, check=False)
        with torch.no_grad():   # the margin reached, from the run's own logits there: who is thin
            z = res.logits if res.logits is not None else model(res.x_adv)
            m = margin_to_flip(z, ps[sel]).to(best_margin.dtype)
        pts, row, ok = best_rows(sel, m, res.success)
        m = m[row]
        better = ok | (m < best_margin[pts])
        cand[pts[better]] = res.x_adv[row[better]]
        best_margin[pts] = torch.minimum(best_margin[pts], m)
        alive[pts[ok]] = False

    def run_targeted(jobs: list[tuple[torch.Tensor, int, torch.Tensor]], n_steps: int) -> None:
        """The targeted margin attack for every job ``(rows, rank of the target, start)`` in one batch."""
        jobs = [j for j in jobs if j[0].numel()]
        if not jobs:
            return
        sel = torch.cat([j[0] for j in jobs])
        tgt = torch.cat([order[j[0], j[1]] for j in jobs])
        run(sel, TargetedMargin(), torch.stack([ps[sel], tgt], dim=1), torch.cat([j[2] for j in jobs]), n_steps)

    n_short = int(steps * SHORT_FRACTION + 1e-9)
    n_random = 0
    for i_run, (loss, rank, start, frac) in enumerate(PLAN):
        n_steps = int(steps * frac + 1e-9)   # 40 -> 32, 8, 8, 8
        if rank is not None and rank >= n_t:
            continue
        sel = torch.nonzero(alive).flatten()
        if sel.numel() == 0 or n_steps < 1:
            continue
        if start == "corner":
            st = corners[0 if rank is None else rank][sel]
        elif start == "x":
            st = xs[sel]
        else:   # a random point of the ball, seeded by (seed, run, sample id)
            st = random_start(xs[sel], eps, norm, (seed ^ (RESTART_SALT + n_random)) & 0xFFFFFFFF, ids_s[sel])
            n_random += 1
        # follow-ups: full length where the best margin so far is within FAR × the clean margin,
        # short (n_short steps) on the points farther from a flip; per sample, so batch-independent
        far = ~thin(best_margin[sel], zs[sel], ps[sel], FAR) if i_run > 0 else torch.zeros_like(sel, dtype=torch.bool)
        for grp, n_grp in ((~far, n_steps), (far, min(n_steps, max(n_short, 1)))):
            if not bool(grp.any()):
                continue
            sg = sel[grp]
            y = ps[sg] if rank is None else torch.stack([ps[sg], order[sg, rank]], dim=1)
            run(sg, loss if rank is None else TargetedMargin(), y, st[grp], n_grp)
    if diversity:   # extra random starts on the thin survivors only (abstain.attacks.diversity)
        n_extra = int(steps * EXTRA_FRACTION + 1e-9)
        diversify(lambda jobs: run_targeted(jobs, n_extra),
                  alive, best_margin, zs, ps, xs, ids_s, eps=eps, norm=norm, n_ranked=n_t, seed=seed)
    x_cand[todo] = cand
    return x_cand, proven


__all__ = ["strong_candidates", "rank_targets", "linear_corner", "MAX_TARGETS"]
