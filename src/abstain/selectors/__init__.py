"""Selectors S of abstain models (F, S) (Sections 5 and 7.2): robustness indicators
S_ERI (eq. 12) and S_CRI (eq. 13), softmax response S_SR (eq. 16) and the selection
network S_SN (eq. 18). See :mod:`abstain.selectors.base` for the shared interface."""
from __future__ import annotations

from .base import Decisions, Selector, ThresholdSelector, predict
from .cri import CertifiedRobustnessIndicator
from .eri import RobustnessIndicator
from .sn import SelectionNetwork, selection_net, selection_targets, train_selection_network
from .sr import ATTACKS as SR_ATTACKS
from .sr import SoftmaxResponse, neg_max_softmax

from .evaluate import KINDS as SELECTORS   # the one registry: name -> Selector class

__all__ = ["Selector", "ThresholdSelector", "Decisions", "predict",
           "RobustnessIndicator", "CertifiedRobustnessIndicator", "SoftmaxResponse",
           "SelectionNetwork", "selection_net", "selection_targets", "train_selection_network",
           "neg_max_softmax", "SR_ATTACKS", "SELECTORS"]
