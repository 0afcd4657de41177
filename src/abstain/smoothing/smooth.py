"""Randomized smoothing (Cohen et al., ICML 2019): the smoothed classifier G of paper Section 4.2.

G(x) = argmax_c P_{η ~ N(0, σ² I)}[F(x + η) = c], with F the base classifier (argmax of the
model's logits). Everything here works in pixel space (inputs in [0, 1]; the normalisation is
inside the model); the noise is added to the pixels and NOT clamped back to [0, 1] (the
certificate is for the Gaussian measure on R^d).

``Smooth`` keeps the interface of Cohen et al.'s ``core.Smooth`` (``predict``, ``certify``,
``ABSTAIN == -1``) and adds ``certify_batch`` over many inputs. Noise is drawn in forward
batches of ``batch_size`` samples (memory independent of ``n``), samples of several inputs
share one forward batch (the accelerator stays full even when each input needs few samples),
class counts are accumulated on the device with one ``bincount`` per batch (no host sync in
the loop), and a ``torch.Generator`` makes every result reproducible.

Soundness and floating point (Voráček & Hein, "Sound randomized smoothing in floating-point
arithmetic", 2023): the Clopper–Pearson bound and Φ⁻¹ are computed in float64 with scipy and
then moved *down* by a relative 1e-12 (``_SHRINK``), and the radius again, so that rounding in
scipy's inverse incomplete beta / inverse normal can only make a certificate smaller. What a
clamp cannot fix — that float32 Gaussian samples and the base classifier's float rounding
only approximate the ideal continuous model — is not addressed; Voráček & Hein show it
matters only for adversarially constructed classifiers, not for ordinary networks.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import beta as _beta
from scipy.stats import binomtest
from scipy.stats import norm as _norm
from torch import nn

from ..errors import InputError
from ..utils import eval_mode
from ..validate import check_inputs

ABSTAIN = -1
_SHRINK = 1e-12  # relative safety margin applied to bounds and radii (see module docstring)


# ----------------------------------------------------------------------------- arguments


def check_sigma(sigma: float) -> float:
    try:
        s = float(sigma)
    except (TypeError, ValueError):
        raise InputError(f"sigma must be a number, got {sigma!r}") from None
    if not math.isfinite(s) or s <= 0:
        raise InputError(f"sigma (the noise level) must be a finite number > 0, got {sigma!r}")
    return s


def check_alpha(alpha: float) -> float:
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise InputError(f"alpha must be a number, got {alpha!r}") from None
    if not (0.0 < a < 1.0):
        raise InputError(f"alpha (the failure probability) must lie strictly between 0 and 1, got {alpha!r}")
    return a


def check_count(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise InputError(f"{name} (number of noise samples) must be an integer >= 1, got {value!r}")
    return int(value)


# ----------------------------------------------------------------------------- statistics


def cp_lower(k: np.ndarray | int, n: np.ndarray | int, alpha: float) -> np.ndarray:
    """One-sided (1 − α) Clopper–Pearson lower bound on a binomial proportion, k successes
    out of n: ``Beta.ppf(α; k, n − k + 1)`` (0 when k = 0), shrunk by a relative 1e-12 so that
    floating-point error cannot enlarge it. Equals Cohen et al.'s
    ``proportion_confint(k, n, alpha=2α, method="beta")[0]``."""
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        p = _beta.ppf(alpha, np.maximum(k, 1.0), n - k + 1.0)
    p = np.where(k <= 0, 0.0, p)
    return np.clip(p * (1.0 - _SHRINK), 0.0, 1.0)


def cp_upper(k: np.ndarray | int, n: np.ndarray | int, alpha: float) -> np.ndarray:
    """One-sided (1 − α) Clopper–Pearson upper bound ``Beta.ppf(1 − α; k + 1, n − k)``
    (1 when k = n), enlarged by a relative 1e-12."""
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        p = _beta.ppf(1.0 - alpha, k + 1.0, np.maximum(n - k, 1.0))
    p = np.where(k >= n, 1.0, p)
    return np.clip(p * (1.0 + _SHRINK), 0.0, 1.0)


def radius_from_bound(p_lower: np.ndarray, sigma: float) -> np.ndarray:
    """Cohen et al.'s ℓ2 radius σ·Φ⁻¹(p̲_A) (Theorem 1 with p̄_B = 1 − p̲_A), rounded towards
    zero by a relative 1e-12; negative where p̲_A < 1/2 (the caller abstains there)."""
    r = sigma * _norm.ppf(np.asarray(p_lower, dtype=np.float64))
    return np.where(r > 0, r * (1.0 - _SHRINK), r * (1.0 + _SHRINK))


def max_certifiable_radius(n: int, alpha: float, sigma: float) -> float:
    """The largest radius ``n`` samples can certify at level α: every sample hits c_A, so
    p̲_A = α^{1/n}; ≤ 0 means every input abstains (Cohen's smoothing issue #8)."""
    return float(radius_from_bound(cp_lower(n, n, alpha), sigma))


def warn_if_unreachable(n: int, alpha: float, sigma: float, eps: float | None = None,
                        what: str = "n") -> None:
    """Warn when ``n`` samples cannot reach ``eps`` (or any positive radius) at level α."""
    r = max_certifiable_radius(n, alpha, sigma)
    if r <= 0:
        warnings.warn(
            f"{what}={n} noise samples cannot certify any input at alpha={alpha:g}: even when all "
            f"samples agree the lower bound alpha^(1/{what}) = {alpha ** (1.0 / n):.4f} < 1/2, so every "
            f"input abstains; use {what} >= {math.ceil(math.log(alpha) / math.log(0.5)) + 1}",
            stacklevel=3)
    elif eps is not None and r < eps:
        warnings.warn(
            f"{what}={n} noise samples at alpha={alpha:g}, sigma={sigma:g} certify radii of at most "
            f"{r:.4f} < eps={eps:g}: no input can be certified at eps={eps:g}",
            stacklevel=3)


# ----------------------------------------------------------------------------- sampling


def device_generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator | None:
    """A generator on ``device``: ``generator`` itself when it lives there, otherwise a new one
    seeded deterministically from it (so a CPU generator still gives reproducible CUDA noise
    without drawing the noise on the host)."""
    if generator is None:
        return None
    if generator.device.type == device.type:
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)


@dataclass
class CertifyResult:
    """Per-input outcome of a (batched) certification; all tensors of length N on the CPU."""

    pred: torch.Tensor        # int64, c_A or ABSTAIN
    radius: torch.Tensor      # float64, σΦ⁻¹(p̲_A); 0 where abstained
    top: torch.Tensor         # int64, c_A chosen from the n0 selection samples
    count: torch.Tensor       # int64, n_A: hits of c_A among the estimation samples
    n: torch.Tensor           # int64, estimation samples used
    n0: torch.Tensor          # int64, selection samples used
    p_lower: torch.Tensor     # float64, the Clopper–Pearson lower bound used
    alpha: torch.Tensor       # float64, the level the bound was computed at

    @property
    def samples(self) -> torch.Tensor:
        """Forward passes per input (selection + estimation)."""
        return self.n + self.n0


class Smooth:
    """A smoothed classifier around a base ``model`` (logits of shape (B, num_classes)).

    The interface of Cohen et al. (``predict``, ``certify``, ``ABSTAIN``); ``x`` is ONE input
    without the batch dimension, of any shape the model accepts after unsqueezing.
    """

    ABSTAIN = ABSTAIN

    def __init__(self, base_classifier: nn.Module, num_classes: int, sigma: float) -> None:
        if not isinstance(num_classes, int) or num_classes < 2:
            raise InputError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        self.base_classifier = base_classifier
        self.num_classes = num_classes
        self.sigma = check_sigma(sigma)

    # -- the sampling engine -------------------------------------------------------------

    @torch.no_grad()
    def sample_counts(self, x: torch.Tensor, num: int, batch_size: int,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """Class counts of the base classifier at ``num`` noisy copies of each input.

        ``x`` has shape (N, *input_shape); returns int64 counts (N, num_classes) on ``x.device``.
        The N·num noisy samples are laid out input-major and cut into forward batches of
        ``batch_size`` samples (a batch may hold samples of several inputs), so memory is
        O(batch_size) whatever ``num`` is. Fresh N(0, σ²I) noise for every sample.
        """
        num = check_count(num, "num")
        batch_size = check_count(batch_size, "batch_size")
        n_inputs = x.shape[0]
        c = self.num_classes
        gen = device_generator(generator, x.device)
        counts = torch.zeros(n_inputs * c, dtype=torch.long, device=x.device)
        total = n_inputs * num
        feat = tuple(x.shape[1:])
        with eval_mode(self.base_classifier), torch.inference_mode():
            for start in range(0, total, batch_size):
                b = min(batch_size, total - start)
                ids = torch.arange(start, start + b, device=x.device).div_(num, rounding_mode="floor")
                batch = torch.randn((b, *feat), generator=gen, device=x.device, dtype=x.dtype)
                batch.mul_(self.sigma).add_(x[0] if n_inputs == 1 else x.index_select(0, ids))
                pred = self.base_classifier(batch).argmax(1)
                counts += torch.bincount(ids.mul_(c).add_(pred), minlength=n_inputs * c)
        return counts.view(n_inputs, c)

    # -- Cohen et al.'s interface ------------------------------------------------------

    def _one(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise InputError(f"x must be a torch.Tensor, got {type(x).__name__}")
        xb = x.unsqueeze(0)
        check_inputs(xb, name="x")
        return xb

    def predict(self, x: torch.Tensor, n: int, alpha: float, batch_size: int,
                generator: torch.Generator | None = None) -> int:
        """G(x) by Monte Carlo, or ``ABSTAIN`` (Cohen et al., PREDICT): draw ``n`` noisy
        copies, take the two most frequent classes and return the top one only when a two-sided
        binomial test of n_A vs n_B (p = 1/2) rejects at level α. With probability ≥ 1 − α the
        returned class (if any) is G(x). Ties always abstain."""
        xb = self._one(x)
        n, alpha = check_count(n, "n"), check_alpha(alpha)
        counts = self.sample_counts(xb, n, batch_size, generator)[0].cpu()
        top2 = torch.topk(counts, 2)
        n_a, n_b = int(top2.values[0]), int(top2.values[1])
        if binomtest(n_a, n_a + n_b, 0.5).pvalue > alpha:
            return ABSTAIN
        return int(top2.indices[0])

    def certify(self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int,
                generator: torch.Generator | None = None) -> tuple[int, float]:
        """Cohen et al.'s CERTIFY for one input: ``(c_A, radius)`` or ``(ABSTAIN, 0.0)``.

        c_A = the most frequent class among ``n0`` noisy copies; p̲_A = the one-sided
        Clopper–Pearson lower bound at level α from ``n`` fresh copies; radius σ·Φ⁻¹(p̲_A).
        Guarantee: with probability ≥ 1 − α over the noise, if a class is returned then G
        predicts it on the whole ℓ2 ball of that radius around x.
        """
        res = self.certify_batch(self._one(x), n0, n, alpha, batch_size, generator, details=True)
        return int(res.pred[0]), float(res.radius[0])

    def certify_batch(self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int,
                      generator: torch.Generator | None = None, *, details: bool = False
                      ) -> tuple[torch.Tensor, torch.Tensor] | CertifyResult:
        """CERTIFY for every row of ``x`` (N, *input_shape) at once.

        Returns ``(classes int64[N], radii float64[N])`` on the CPU (ABSTAIN / 0.0 where
        p̲_A < 1/2), or the full :class:`CertifyResult` when ``details``. Samples of several
        inputs share forward batches, so small ``n`` per input still fills the device.
        """
        check_inputs(x, name="x")
        n0, n = check_count(n0, "n0"), check_count(n, "n")
        alpha = check_alpha(alpha)
        warn_if_unreachable(n, alpha, self.sigma)
        counts0 = self.sample_counts(x, n0, batch_size, generator)
        top = counts0.argmax(1)
        counts = self.sample_counts(x, n, batch_size, generator)
        n_a = counts.gather(1, top[:, None])[:, 0].cpu()
        top = top.cpu()
        p_low = cp_lower(n_a.numpy(), n, alpha)
        res = self.result_from_bound(top, n_a, torch.full_like(n_a, n), torch.full_like(n_a, n0),
                                     p_low, alpha)
        return res if details else (res.pred, res.radius)

    def result_from_bound(self, top: torch.Tensor, count: torch.Tensor, n: torch.Tensor,
                          n0: torch.Tensor, p_lower: np.ndarray, alpha: float | np.ndarray
                          ) -> CertifyResult:
        """Turn lower bounds p̲_A into (class, radius): abstain where p̲_A < 1/2."""
        p_lower = np.asarray(p_lower, dtype=np.float64)
        ok = p_lower >= 0.5
        radius = np.where(ok, np.maximum(radius_from_bound(p_lower, self.sigma), 0.0), 0.0)
        pred = torch.where(torch.from_numpy(ok), top, torch.full_like(top, ABSTAIN))
        return CertifyResult(pred=pred, radius=torch.from_numpy(radius), top=top, count=count,
                             n=n, n0=n0, p_lower=torch.from_numpy(p_lower),
                             alpha=torch.from_numpy(np.broadcast_to(np.asarray(alpha, dtype=np.float64),
                                                                    p_lower.shape).copy()))


def certify_batch(model: nn.Module, num_classes: int, sigma: float, x: torch.Tensor, n0: int, n: int,
                  alpha: float, batch_size: int, generator: torch.Generator | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Functional form of :meth:`Smooth.certify_batch`."""
    return Smooth(model, num_classes, sigma).certify_batch(x, n0, n, alpha, batch_size, generator)
