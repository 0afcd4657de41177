"""Randomized smoothing: the smoothed classifier (predict, certify), sequential certification and
the differentiable smoothed radius of paper eq. 11."""
from __future__ import annotations

from .radius import noisy_logits, safe_icdf, smoothed_radius, soft_smoothed_probs
from .sequential import SequentialResult, certify_sequential, look_schedule
from .smooth import (ABSTAIN, CertifyResult, Smooth, certify_batch, cp_lower, cp_upper,
                     max_certifiable_radius, radius_from_bound)

__all__ = [
    "ABSTAIN", "Smooth", "CertifyResult", "certify_batch", "cp_lower", "cp_upper",
    "max_certifiable_radius", "radius_from_bound", "SequentialResult", "certify_sequential",
    "look_schedule", "noisy_logits", "safe_icdf", "smoothed_radius", "soft_smoothed_probs",
]
