"""Counted cost of the strong attack relative to APGD-CE-40 (deterministic, load-independent).

On the points of ``bench/attacks.py``'s two ``strong_vs_apgd_ce`` models (the digits CNN at
ε = 0.05, the PGD-AT MNIST-1D 1-D CNN at ε = 0.02) that stay robust under both attacks, counts
the rows through the model: a forward pass costs 1 per row and every backward pass through its
output 2 per row (a forward-backward 3; one forward with J backward passes through its graph,
as in the strong attack's ranking, 1 + 2J). Prints JSON: the robust counts, ``cost_ratio``
(strong / APGD-CE) and ``cost_ratio_nodiv`` (without the start diversity).

Usage: ``python bench/strong_cost.py``.
"""
from __future__ import annotations

import json
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def counter(m: nn.Module) -> dict[str, int]:
    st = {"c": 0}

    def hook(mod: nn.Module, args: tuple, out: torch.Tensor) -> None:
        n = int(out.shape[0])
        st["c"] += n
        if out.requires_grad:
            out.register_hook(lambda g: st.__setitem__("c", st["c"] + 2 * n))

    m.register_forward_hook(hook)
    return st


def main() -> int:
    from attacks import digits_cnn, mnist1d_cnn

    from abstain.attacks import is_robust

    torch.set_num_threads(1)
    dev = torch.device("cpu")
    d, m1 = digits_cnn(dev), mnist1d_cnn(dev)
    out = {}
    for name, (m, x, eps) in {"digits_cnn": (d[0], d[1], 0.05), "mnist1d_cnn1d": (m1[0], m1[1], 0.02)}.items():
        def run(xs: torch.Tensor, **kw: object) -> torch.Tensor:
            return is_robust(m, xs, eps=eps, generator=torch.Generator().manual_seed(0), **kw)

        rc, rs = run(x, attack="apgd-ce"), run(x)
        xr = x[rc & rs]
        st = counter(m)
        costs = {}
        for k, kw in {"apgd-ce": {"attack": "apgd-ce"}, "strong": {}, "nodiv": {"diversity": False}}.items():
            st["c"] = 0
            run(xr, **kw)
            costs[k] = st["c"]
        out[name] = {"points": int(x.shape[0]), "robust_apgd_ce": int(rc.sum()), "robust_strong": int(rs.sum()),
                     "robust_both": int(xr.shape[0]),
                     "cost_ratio": round(costs["strong"] / costs["apgd-ce"], 3),
                     "cost_ratio_nodiv": round(costs["nodiv"] / costs["apgd-ce"], 3)}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
