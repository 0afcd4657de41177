"""Sequential certification: decide "certified radius ≥ ε" with far fewer noise samples.

For the certified partition and the robustness indicator S_CRI (paper eq. 13) the question per
input is only whether G is certified at the asked radii ε_1, …, ε_m, not the radius itself.
Cohen et al.'s CERTIFY spends N = 100,000 samples on every input; most inputs are decided
after a few hundred.

Method (a union-bound confidence sequence over a fixed grid of looks, as in the "finite union"
construction of Voráček, Hein et al., NeurIPS 2024, and the adaptive sampling for a
predetermined radius of Horváth et al., ICLR 2022):

1. c_A is the most frequent class among ``n0`` noisy copies (as in CERTIFY; these samples are
   not reused).
2. Estimation samples are drawn in looks of cumulative size n_1 < n_2 < … < n_K = n_max
   (geometric growth by ``growth``, the first look just large enough that an all-hit look can
   certify the smallest asked ε). The error budget is split uniformly, α_i = α / K.
3. At look i, with n_A hits of c_A among the n_i samples so far, compute the one-sided
   Clopper–Pearson bounds L_i = CP_lower(n_A, n_i; α_i) and U_i = CP_upper(n_A, n_i; α_i);
   keep L = max_{j≤i} L_j and U = min_{j≤i} U_j. In radius space r̲ = σΦ⁻¹(L), r̄ = σΦ⁻¹(U).
4. The decision for ε is settled once r̲ ≥ ε (certified), or r̄ < ε (p_A is too small), or ε
   is out of reach of the budget (even if all n_max − n_i remaining samples hit c_A, the last
   look's bound stays below Φ(ε/σ); e.g. radii above max_certifiable_radius(n_max)).
   The input stops at the first look where every asked ε is settled (plain-certify mode,
   ``eps=()``: once r̄ − r̲ ≤ ``radius_tol``), or at n_max.
5. Output as CERTIFY: (c_A, r̲) when L ≥ 1/2, else (ABSTAIN, 0); "certified@ε" ⇔ not abstained
   and r̲ ≥ ε. Unsettled decisions at n_max are therefore "not certified" (conservative).

Guarantee. For each look, P(L_i > p_A) ≤ α_i whatever the stopping rule, so by the union bound
P(∃ i: L_i > p_A) ≤ Σ α_i = α: with probability ≥ 1 − α over the noise the reported radius r̲
satisfies p_A ≥ Φ(r̲/σ), hence (Cohen et al., Theorem 1) G(x + δ) = c_A for all ‖δ‖₂ < r̲ —
the same guarantee, at the same α, as CERTIFY with a fixed N. The stopping rule only decides
*when* to stop; it cannot invalidate the bounds because each look's bound is valid on its own
and the union covers every look that could ever be taken. The futility rules (r̄ < ε, ε out of
reach) only ever withhold a certificate, which is always safe. Noise is fresh for every sample; samples are
reused across looks (cumulative counts), which the union bound allows.

Compared with fixed-N CERTIFY at the same α, the last look uses α/K instead of α, so an input
whose p_A sits right at Φ(ε/σ) may be certified by one and not the other: the
``decision_agreement`` of the digits-certify stage measures how rarely this happens.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from ..validate import check_eps, check_inputs
from .smooth import (ABSTAIN, CertifyResult, Smooth, check_alpha, check_count, cp_lower, cp_upper,
                     radius_from_bound, warn_if_unreachable)


@dataclass
class SequentialResult(CertifyResult):
    """A :class:`CertifyResult` plus the ε decisions and the number of looks taken."""

    eps: tuple[float, ...] = ()
    decisions: torch.Tensor | None = None   # bool (N, len(eps)): certified at radius ≥ ε
    looks: torch.Tensor | None = None       # int64 (N,): looks taken
    alpha_look: float = 0.0                 # α_i = α / K
    schedule: tuple[int, ...] = ()          # cumulative estimation sample sizes n_1 … n_K


def look_schedule(n_first: int, n_max: int, growth: float = 2.0) -> tuple[int, ...]:
    """Cumulative sample sizes of the looks: n_first, ⌈n_first·growth⌉, …, capped at n_max
    (always the last look)."""
    n_first, n_max = check_count(n_first, "n_first"), check_count(n_max, "n_max")
    if not (growth > 1.0 and math.isfinite(growth)):
        raise InputError(f"growth must be a finite number > 1, got {growth!r}")
    sizes: list[int] = []
    n = min(n_first, n_max)
    while n < n_max:
        sizes.append(n)
        n = max(n + 1, math.ceil(n * growth))
    sizes.append(n_max)
    return tuple(sizes)


def _first_look(eps: tuple[float, ...], sigma: float, alpha: float, n_max: int, growth: float) -> int:
    """Smallest n at which an all-hit look (p̲ = α_i^{1/n}) certifies the smallest positive ε
    (or, without positive ε, any radius ≥ 0); K depends on n_1, so iterate to a fixed point."""
    positive = [e for e in eps if e > 0]
    q = float(_phi(min(positive) / sigma)) if positive else 0.5
    k = 1
    n1 = 1
    for _ in range(8):
        n1 = max(1, math.ceil(math.log(alpha / k) / math.log(q)))
        k_new = len(look_schedule(min(n1, n_max), n_max, growth))
        if k_new == k:
            break
        k = k_new
    return min(n1, n_max)


def _phi(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def certify_sequential(smooth: Smooth, x: torch.Tensor, eps: tuple[float, ...] | list[float] = (), *,
                       n0: int, n_max: int, alpha: float, batch_size: int,
                       generator: torch.Generator | None = None, n_first: int | None = None,
                       growth: float = 2.0, radius_tol: float | None = None) -> SequentialResult:
    """Sequentially certify every row of ``x`` (N, *input_shape) for the radii ``eps``.

    See the module docstring for the method and its guarantee (valid at level ``alpha`` like
    :meth:`Smooth.certify_batch` with N = ``n_max``). ``eps=()`` with ``radius_tol`` is the
    plain-certify mode: stop once the radius is known to within ``radius_tol``. Returns a
    :class:`SequentialResult` (CPU tensors); ``result.samples`` are the forward passes used.
    """
    check_inputs(x, name="x")
    eps_t = tuple(check_eps(e) for e in eps)
    n0, n_max = check_count(n0, "n0"), check_count(n_max, "n_max")
    alpha = check_alpha(alpha)
    if not eps_t and radius_tol is None:
        raise InputError("sequential certification needs radii eps to decide or a radius_tol")
    if radius_tol is not None and not (radius_tol > 0):
        raise InputError(f"radius_tol must be > 0, got {radius_tol!r}")
    sigma = smooth.sigma
    for e in eps_t:
        warn_if_unreachable(n_max, alpha, sigma, e, what="n_max")
    if not eps_t:
        warn_if_unreachable(n_max, alpha, sigma, what="n_max")
    if n_first is None:
        n_first = _first_look(eps_t, sigma, alpha, n_max, growth)
    schedule = look_schedule(n_first, n_max, growth)
    a_look = alpha / len(schedule)

    n_inputs = x.shape[0]
    top = smooth.sample_counts(x, n0, batch_size, generator).argmax(1)
    top_cpu = top.cpu()
    count = np.zeros(n_inputs, dtype=np.int64)
    n_used = np.zeros(n_inputs, dtype=np.int64)
    looks = np.zeros(n_inputs, dtype=np.int64)
    low = np.zeros(n_inputs, dtype=np.float64)
    up = np.ones(n_inputs, dtype=np.float64)
    eps_arr = np.asarray(eps_t, dtype=np.float64)
    active = np.ones(n_inputs, dtype=bool)
    prev = 0
    for size in schedule:
        idx = np.nonzero(active)[0]
        if idx.size == 0:
            break
        idx_t = torch.from_numpy(idx).to(x.device)
        counts = smooth.sample_counts(x.index_select(0, idx_t), size - prev, batch_size, generator)
        count[idx] += counts.gather(1, top.index_select(0, idx_t)[:, None])[:, 0].cpu().numpy()
        n_used[idx] = size
        looks[idx] += 1
        low[idx] = np.maximum(low[idx], cp_lower(count[idx], size, a_look))
        up[idx] = np.minimum(up[idx], cp_upper(count[idx], size, a_look))
        r_low = radius_from_bound(low[idx], sigma)
        r_up = radius_from_bound(up[idx], sigma)
        # the best lower bound still reachable: every remaining sample up to n_max hits c_A
        r_best = radius_from_bound(cp_lower(count[idx] + (n_max - size), n_max, a_look), sigma)
        r_best = np.maximum(r_best, r_low)
        settled = np.ones(idx.size, dtype=bool)
        if eps_arr.size:
            settled &= ((r_low[:, None] >= eps_arr) | (r_up[:, None] < eps_arr)
                        | (r_best[:, None] < eps_arr)).all(1)
        if radius_tol is not None:
            settled &= (r_up - r_low <= radius_tol) | (r_up < 0)
        active[idx[settled]] = False
        prev = size

    res = smooth.result_from_bound(top_cpu, torch.from_numpy(count), torch.from_numpy(n_used),
                                   torch.full((n_inputs,), n0, dtype=torch.long), low, alpha)
    certified = (res.pred != ABSTAIN)[:, None] & (res.radius[:, None] >= torch.from_numpy(eps_arr)[None, :])
    return SequentialResult(**vars(res), eps=eps_t, decisions=certified, looks=torch.from_numpy(looks),
                            alpha_look=a_look, schedule=schedule)
