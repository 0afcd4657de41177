"""abstain: find and remove robust misclassifications.

Implements "Avoiding Robust Misclassifications for Improved Robustness without
Accuracy Loss" (paper in shared/paper.txt). Images are float tensors in [0, 1];
normalisation lives inside the models, so every ε is in pixel space.
"""
__version__ = "0.1.0"


def __getattr__(name: str):
    """Lazy exports (imported on first use so ``import abstain`` stays light); each takes an
    ``nn.Module`` and a ``Dataset``, like the command of the same name:

    ``abstain.evaluate``  :func:`abstain.evaluation.evaluate` (the robustness-accuracy partition);
    ``abstain.certify``   :func:`abstain.jobs.certify` (randomized smoothing);
    ``abstain.compose``   :func:`abstain.abstain_job.compose` (abstain model + core, eq. 15).
    """
    if name == "evaluate":
        from .evaluation import evaluate

        return evaluate
    if name == "certify":
        from .jobs import certify

        return certify
    if name == "compose":
        from .abstain_job import compose

        return compose
    raise AttributeError(f"module 'abstain' has no attribute {name!r}")
