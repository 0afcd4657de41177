"""abstain: find and remove robust misclassifications.

Implements "Avoiding Robust Misclassifications for Improved Robustness without
Accuracy Loss" (paper in shared/paper.txt). Images are float tensors in [0, 1];
normalisation lives inside the models, so every ε is in pixel space.
"""
__version__ = "0.1.0"


def __getattr__(name: str):
    """Lazy exports: ``abstain.evaluate`` is :func:`abstain.evaluation.evaluate` (imported
    on first use so ``import abstain`` stays light)."""
    if name == "evaluate":
        from .evaluation import evaluate

        return evaluate
    raise AttributeError(f"module 'abstain' has no attribute {name!r}")
