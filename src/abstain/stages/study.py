"""A miniature study: the same four stages (partition, fine-tune, abstain, compose) on one
small dataset. ``digits`` is the fast regression (it has almost no robust inaccuracy at
these ε); ``mnist1d`` is where robust inaccuracy is frequent (the TRADES model's robust
inaccuracy lies in the range of the paper's Table 1), so it can show what ERA does.

Everything a study's stages train is a config of ``configs/``; a study names them and the
few settings that differ between datasets (sweeps, seeds, the size of the abstain subset).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class Study:
    """The settings of one miniature study (see the module doc)."""

    prefix: str                                  # stage names: <prefix>-partition, …
    label: str                                   # the dataset as the report names it
    std: str                                     # config of the standard core model
    trades: str                                  # config of TRADES from scratch at the study ε
    pretrain: str                                # config of the TRADES pre-training at 2ε
    finetunes: Mapping[str, Mapping[str, Any]]   # variant -> {"config": …, "set": {…}}
    sweep: Mapping[str, Mapping[str, Any]]       # Fig. 2 sweep (γ of TRADES, β of ERA), seed 0
    partition_sweep: tuple[float, ...]
    demo_partition_sweep: tuple[float, ...]
    seeds: tuple[int, ...]
    demo_seeds: tuple[int, ...] = (0,)
    abstain_models: tuple[str, ...] = ("trades", "era", "dga")   # S_ERI of each
    selector_model: str = "trades"               # the model of S_SR and S_SN
    compose_robust: str = "era"                  # F_robust of the paper's composition
    abstain_samples: int | None = None           # None: the whole test split
    demo_abstain_samples: int = 200
    sn_samples: int | None = None                # S_SN trained on a subset of the training split
    # one pre-trained model fine-tuned with every seed (like the paper's fine-tunes of one
    # published model), instead of a pre-training per seed
    shared_pretrain: bool = False
    # the stage whose work/pretrain-s<seed> the fine-tunes start from (trained once, shared with
    # other stages), instead of a pre-training inside <prefix>-finetune
    pretrain_stage: str | None = None
    # how <prefix>-partition chooses ε from its sweep: "gap" or "table1" (stages/partition.py)
    eps_rule: str = "gap"
    expected: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    note: str = ""                               # what the study can and cannot show (report)

    def name(self, kind: str) -> str:
        return f"{self.prefix}-{kind}"


DIGITS = Study(
    prefix="digits", label="digits",
    std="digits-std", trades="digits-trades", pretrain="digits-trades-pretrain",
    finetunes={
        "trades": {"config": "digits-trades-finetune"},
        "era": {"config": "digits-era-finetune"},
        # the authors' single untargeted inner point with the printed loss: an attack ablation
        "era-shared": {"config": "digits-era-finetune", "set": {"loss.era_inner": "untargeted-shared"}},
        "dga": {"config": "digits-dga-finetune"},
    },
    sweep={
        "trades-g2": {"config": "digits-trades-finetune", "set": {"loss.gamma": 2.0}},
        "trades-g12": {"config": "digits-trades-finetune", "set": {"loss.gamma": 12.0}},
        "era-b0.25": {"config": "digits-era-finetune", "set": {"loss.beta": 0.25}},
        "era-b4": {"config": "digits-era-finetune", "set": {"loss.beta": 4.0}},
    },
    partition_sweep=(0.05, 0.1, 0.15, 0.2, 0.3), demo_partition_sweep=(0.1, 0.2),
    seeds=(0, 1, 2), abstain_samples=450, demo_abstain_samples=200, sn_samples=None,
    expected={"partition": (40.0, 300.0), "finetune": (60.0, 900.0), "abstain": (100.0, 500.0),
              "compose": (5.0, 20.0)},
    note=("Digits is the fast regression, not a test of the paper's effect: at these ε its models have "
          "almost no robust inaccuracy (a few test images at most; one image is 1/450 = 0.22% of the test set; "
          "the tables give the measured values), so the losses cannot be told apart by "
          "it here. The MNIST-1D stages (mnist1d-*) are the study where robust inaccuracy is frequent."),
)

MNIST1D = Study(
    prefix="mnist1d", label="MNIST-1D",
    std="mnist1d-std", trades="mnist1d-trades", pretrain="mnist1d-trades-pretrain",
    finetunes={
        "trades": {"config": "mnist1d-trades-finetune"},
        "era": {"config": "mnist1d-era-finetune"},
        "era-authors": {"config": "mnist1d-era-authors-finetune"},
        "dga": {"config": "mnist1d-dga-finetune"},
    },
    sweep={},
    # the full sweep the study's ε was chosen from is in configs/mnist1d-trades-pretrain.toml
    partition_sweep=(0.01, 0.02, 0.04), demo_partition_sweep=(0.02,),
    seeds=(0, 1, 2, 3, 4), abstain_samples=1000, demo_abstain_samples=300, sn_samples=3000,
    shared_pretrain=True, pretrain_stage="mnist1d-pretrain", eps_rule="table1",
    expected={"partition": (60.0, 300.0), "finetune": (120.0, 900.0), "abstain": (120.0, 400.0),
              "compose": (10.0, 30.0)},
    note=("MNIST-1D (generated offline, 2,000 test signals) at ε∞ = 0.02 was chosen so that TRADES' "
          "robust inaccuracy lies in the range of the paper's Table 1 (1–8%); the sweep it was chosen "
          "from is in configs/mnist1d-trades-pretrain.toml."),
)

__all__ = ["Study", "DIGITS", "MNIST1D"]
