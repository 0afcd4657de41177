"""abstain: find and remove robust misclassifications.

Implements "Avoiding Robust Misclassifications for Improved Robustness without
Accuracy Loss" (paper in shared/paper.txt). Images are float tensors in [0, 1];
normalisation lives inside the models, so every ε is in pixel space.
"""
__version__ = "0.1.0"


def __getattr__(name: str):
    """Lazy exports (imported on first use so ``import abstain`` stays light); each takes any
    ``nn.Module``, any ``(x, y)`` Dataset or DataLoader, a radius or a list of radii and
    ``normalize``, like the command of the same name, and returns
    :class:`abstain.records.Records` with a summary keyed by radius (:mod:`abstain.api`):

    ``abstain.evaluate``  the robustness-accuracy partition (eq. 1–3);
    ``abstain.certify``   randomized smoothing (Tables 2, 3);
    ``abstain.compose``   abstain model + core (eq. 14, 15), every selector.
    """
    if name in ("evaluate", "certify", "compose", "Records"):
        from . import api, records  # noqa: PLC0415  heavy: torch; `import abstain` stays light

        return records.Records if name == "Records" else getattr(api, name)
    raise AttributeError(f"module 'abstain' has no attribute {name!r}")
