"""Start diversity where margins are thin: extra random-start runs of the strong attack.

The flips that a single-start attack misses lie in thin slivers at the ball's surface, near
its vertices (flipping margins of 10⁻³–10⁻² logits, PITFALLS "Thin slivers"): more steps do
not reach them, fresh starts towards the top-ranked classes do (APGD-T's restart per
target, Square's vertex search; Croce & Hein 2020). Such starts pay only where the best
point found so far is already close to a flip, so they are spent there alone:

* **Who.** A point still robust after :data:`abstain.attacks.strong.PLAN` is *thin* when its
  best margin ``m* = z_y(x*) - max_{t≠y} z_t(x*)`` over the points the runs reached is at
  most :data:`THIN` (0.3) × its clean margin ``m(x) = z_y(x) - max_{t≠y} z_t(x)`` (the
  logit scale of that point; scale-free, so a model whose logits are multiplied by 10³⁰ is
  treated alike): the attack came 70 % of the way to a flip and stopped. Points with a
  larger margin get nothing extra. (The spread of the clean logits as the scale instead
  made every low-confidence point of an untrained CNN thin at a tiny ε, where nothing
  moves: 2.9× APGD-CE on robust points.)
* **What.** :data:`EXTRA`: 12 runs of ``steps // 10`` steps of APGD on the targeted margin
  ``z_t - z_y`` (:class:`abstain.attacks.objectives.TargetedMargin`) towards the 1st-,
  2nd- and 3rd-ranked classes (two each per round), from a uniform random point of the
  ball (APGD's start) and from a random vertex ``x + ε·sign(u)`` of the ℓ∞ ball (Square's
  initialisation; ℓ2: a random point of the sphere); then a third round of 6 only on the
  points whose best margin is still ≤ :data:`VERY_THIN` (0.1) × the clean margin, and a
  fourth, also only there, of one run from a random vertex towards each of the 4th- to
  9th-ranked classes (the linearised corners can rank the class of a thin sliver 4th;
  APGD-T, which runs towards each of the 9 classes with the highest clean logits, finds it:
  a TRADES 1-D ResNet-BN of ``tests/test_attacks_autoattack.py`` on an AMD EPYC, where the
  targeted run towards that class flips from 95-100 % of random starts and those towards the
  top-3 from 1-8 %). The 6 runs of a round go in one batch (:data:`ROUND`; a point's rows are
  independent, so it flips where a run in turn would, or more: one call instead of six), on
  the points not yet flipped and thin at the round's start, seeded by ``(seed, run, sample
  id)``: the result is a function of the sample alone.

Budget: on a thin point at most ``12 · (steps // 10)`` more steps (``24 · (steps // 10)``
on a very thin one) plus one forward pass per run; nothing on points whose margin stays
above the threshold. Why these numbers: on the ReLU-network MILP cases of
``tests/test_attacks_oracle.py`` the flips missed without them had best/clean margin
ratios of 0.03–0.28 and needed 6 or more starts towards the top-ranked class or starts
towards the 2nd/3rd (12 runs in another order, or staged 6 + 12, missed 1–2 of them); on the trained digits CNN of ``bench/attacks.py`` at ε = 0.05, 43 of
380 robust points are within 0.3 and 6 within 0.1: ≈ 0.17× APGD-CE more in forward/backward
passes on robust points (counted: 1.45× against 1.28× without); on the PGD-AT MNIST-1D CNN,
45 of 150 within 0.3 and 12 within 0.1, 1.81× against 1.35× (``bench/attacks.py`` models,
stop 31; counts, not timings).
"""
from __future__ import annotations

from typing import Callable

import torch

from .core import hashed_uniform, project, random_start

THIN = 0.3                # thin: best margin ≤ THIN × clean margin
VERY_THIN = 0.1           # the later extra runs: best margin ≤ VERY_THIN × clean margin
VERTEX_SALT = 0xC0FFEE    # mixed into the seed of the vertex starts
# (rank of the target, start, threshold) of the extra runs, in order, each on the points not
# yet flipped whose best margin so far is within the threshold × their clean margin
ROUND = 6                 # runs per round, each round one batch
EXTRA: tuple[tuple[int, str, float], ...] = (
    # rounds 1-3: the 1st-, 2nd- and 3rd-ranked classes, from a random point and a random vertex
    *((rank, start, THIN if rep < 2 else VERY_THIN)
      for rep in range(3) for rank in (0, 1, 2) for start in ("random", "vertex")),
    # round 4, where very thin: the 4th- to 9th-ranked classes once each, from a random vertex (the corner
    # ranking can put the class of a thin sliver 4th: APGD-T, which tries every class, finds it)
    *((rank, "vertex", VERY_THIN) for rank in range(3, 9)),
)


def margin_to_flip(logits: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """``z_y - max_{t≠y} z_t`` per sample (negative: the prediction changed)."""
    zy = logits.gather(1, pred.view(-1, 1)).squeeze(1)
    return zy - logits.scatter(1, pred.view(-1, 1), float("-inf")).amax(dim=1)


def thin(best_margin: torch.Tensor, clean_logits: torch.Tensor, pred: torch.Tensor,
         limit: float = THIN) -> torch.Tensor:
    """Points whose best margin is at most ``limit`` × their clean margin (N,) bool;
    non-finite margins count as thin (nothing is known about them)."""
    return ~(best_margin > limit * margin_to_flip(clean_logits, pred))


def random_vertex(x: torch.Tensor, eps: float, norm: str, seed: int, ids: torch.Tensor) -> torch.Tensor:
    """A random vertex of the ℓ∞ ball, ``x + ε·sign(2u - 1)`` clipped to the box (Square's
    start); for ℓ2 a random point of the sphere (:func:`random_start`). ``u`` is a pure
    function of (seed, sample id, coordinate)."""
    if norm != "linf":
        return random_start(x, eps, norm, seed, ids)
    u = hashed_uniform(seed, ids, x[0].numel(), torch.float64) if x.shape[0] else x.flatten(1).double()
    s = torch.where(u >= 0.5, 1.0, -1.0).to(x.dtype).view_as(x)
    return project(x + eps * s, x, eps, norm)


def diversify(run: Callable[[list[tuple[torch.Tensor, int, torch.Tensor]]], None], alive: torch.Tensor,
              best_margin: torch.Tensor, clean_logits: torch.Tensor, pred: torch.Tensor, xs: torch.Tensor,
              ids: torch.Tensor, *,
              eps: float, norm: str, n_ranked: int, seed: int) -> int:
    """Run :data:`EXTRA` on the thin points still ``alive``, one round (one batch) per
    repetition; ``run(jobs)`` runs, for every job ``(rows, rank, start)``, the targeted margin
    attack on ``rows`` towards their ``rank``-ranked class from ``start`` (all jobs of a round
    in one batch: a point's rows are independent, so the flips are those of running them in
    turn, or more) and clears ``alive`` where one flips. Who is thin is decided at the start
    of each round. Returns the number of thin points."""
    n_thin = int(thin(best_margin, clean_logits, pred)[alive].sum())
    for r in range(0, len(EXTRA), ROUND):
        js = range(r, min(r + ROUND, len(EXTRA)))
        jobs = []
        for j in js:
            rank, start, limit = EXTRA[j]
            if rank >= n_ranked:
                continue
            sel = torch.nonzero(alive & thin(best_margin, clean_logits, pred, limit)).flatten()
            if sel.numel() == 0:
                continue
            s = (seed ^ (VERTEX_SALT + 97 * j)) & 0xFFFFFFFF
            make = random_vertex if start == "vertex" else random_start
            jobs.append((sel, rank, make(xs[sel], eps, norm, s, ids[sel])))
        if jobs:
            run(jobs)
    return n_thin


__all__ = ["diversify", "thin", "margin_to_flip", "random_vertex", "THIN", "VERY_THIN", "EXTRA"]
