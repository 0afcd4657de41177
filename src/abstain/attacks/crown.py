"""Linear (CROWN) lower bounds of the margin over the threat model, on the ``torch.fx`` trace.

CROWN (Zhang et al. 2018, "Efficient neural network robustness certification with general
activation functions"; the backward linear relaxation of auto_LiRPA, Xu et al. 2020) bounds
the margins ``c_j·z(x') = z_y(x') - z_j(x')`` by one linear function of the input,
propagated backward from the margin matrix ``C`` through the graph of
:func:`abstain.attacks.interval.graph_of`, in reverse topological order, accumulating the
coefficients that reach a node from all its users (residual additions):

* **affine nodes** (everything the interval walk accepts except ReLU and max pooling:
  ``Linear``, ``Conv1d/2d``, eval BatchNorm, ``Normalize``, average pooling, ``mean``,
  reshapes, slicing, ``cat``, sums and constants): ``v = L(u) + b`` with ``b`` the node at
  ``u = 0`` and ``Lᵀ`` from :func:`torch.func.vjp`, batched over the specifications with
  :func:`torch.func.vmap`;
* **ReLU** with pre-activation box ``[l, u]``: stable neurons exactly; unstable ones between
  the upper line ``u/(u-l)·(v-l)`` and the adaptive lower line ``α·v``, ``α = 1`` if
  ``u ≥ -l`` else 0 (the sign of each coefficient picks the side);
* **max pooling** (modules): ``max ≥ v_i*`` (``i*`` the input of largest lower bound); above,
  ``v_i*`` itself where it dominates the window (disjoint windows), else ``max u``.

The boxes of the nonlinear nodes' inputs come from interval bounds (``intermediate="ibp"``,
the CROWN-IBP variant of Zhang et al. 2020) or, with ``intermediate="crown"``, are tightened
by a CROWN pass of their own (full CROWN; one backward per unstable neuron, much slower). At the
input the linear bound is minimised over the box ``[max(x-ε,0), min(x+ε,1)]`` (ℓ∞: exactly
the ball ∩ box) and, for ℓ2, also over the ball ``x - ε||A||₂`` (the larger of two sound
bounds). A model the interval walk does not handle, or a max pooling called as a function,
gives ``None``. auto_LiRPA itself does not install beside current torch (its releases pin
torch < 1.13), hence this small implementation.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .interval import Box, Unsupported, walk_boxes

_RELU_FUNCS = (F.relu, torch.relu)
_MAXPOOL_FUNCS = (F.max_pool1d, F.max_pool2d)
INTERMEDIATE = ("ibp", "crown")


def _kind(model: nn.Module, node: fx.Node) -> str:
    """``"relu"``, ``"maxpool"`` or ``"affine"`` (in its bounded inputs)."""
    if node.op == "call_module":
        m = model.get_submodule(str(node.target))
        if isinstance(m, nn.ReLU):
            return "relu"
        if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d)):
            return "maxpool"
    if node.op == "call_function" and node.target in _RELU_FUNCS:
        return "relu"
    if node.op == "call_function" and node.target in _MAXPOOL_FUNCS:
        raise Unsupported("max pooling called as a function")
    if node.op == "call_method" and node.target == "relu":
        return "relu"
    return "affine"


def _op(model: nn.Module, node: fx.Node) -> Callable:
    if node.op == "call_module":
        return model.get_submodule(str(node.target))
    if node.op == "call_function":
        return node.target   # type: ignore[return-value]
    return lambda self, *a, **k: getattr(self, str(node.target))(*a, **k)


def _affine_back(model: nn.Module, node: fx.Node, env: dict[fx.Node, Any], a: torch.Tensor
                 ) -> tuple[list[tuple[fx.Node, torch.Tensor]], torch.Tensor]:
    """``a·v`` for ``v = L(u₁, …) + b``: the coefficients ``Lᵀa`` of the bounded inputs
    ``u_i`` and the constant ``a·b``; ``a`` is (N, S, *shape of v)."""
    boxed = [n for n in node.all_input_nodes if isinstance(env[n], Box)]
    op = _op(model, node)

    def f(*ts: torch.Tensor) -> torch.Tensor:
        sub = dict(zip(boxed, ts))
        args = fx.node.map_arg(node.args, lambda n: sub[n] if n in sub else env[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: sub[n] if n in sub else env[n])
        return op(*args, **kwargs)

    bias, vjp_fn = torch.func.vjp(f, *[torch.zeros_like(env[n].lo) for n in boxed])
    grads = torch.func.vmap(vjp_fn, in_dims=1, out_dims=1)(a)
    const = (a * bias.detach().unsqueeze(1)).flatten(2).sum(-1)
    return [(n, g.detach()) for n, g in zip(boxed, grads)], const


def _relu_back(a: torch.Tensor, box: Box) -> tuple[torch.Tensor, torch.Tensor]:
    """``a·relu(v)`` ≥ ``a'·v + c`` for ``v`` in ``box``: ``(a', c)``."""
    lo, hi = box.lo, box.hi
    unstable = (lo < 0) & (hi > 0)
    up = torch.where(unstable, hi / (hi - lo).clamp_min(torch.finfo(lo.dtype).tiny), (lo >= 0).to(lo.dtype))
    low = torch.where(unstable, (hi >= -lo).to(lo.dtype), (lo >= 0).to(lo.dtype))
    icpt = torch.where(unstable, -up * lo, torch.zeros_like(lo))
    neg = a.clamp_max(0)
    slope = torch.where(a >= 0, low.unsqueeze(1), up.unsqueeze(1))
    return a * slope, (neg * icpt.unsqueeze(1)).flatten(2).sum(-1)


def _maxpool_back(m: nn.MaxPool1d | nn.MaxPool2d, a: torch.Tensor, box: Box
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``a·maxpool(v)`` ≥ ``a'·v + c`` for ``v`` in ``box`` (see the module doc)."""
    pool = F.max_pool1d if isinstance(m, nn.MaxPool1d) else F.max_pool2d
    d = 1 if isinstance(m, nn.MaxPool1d) else 2

    def tup(v: Any) -> tuple:
        return tuple(v) if isinstance(v, (tuple, list)) else (v,) * d

    args = (m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)
    lo_sel, idx = pool(box.lo, *args, return_indices=True)
    hi_max = pool(box.hi, *args)
    idx = idx.flatten(2)
    if tup(m.stride) == tup(m.kernel_size) and tup(m.padding) == (0,) * d and tup(m.dilation) == (1,) * d:
        others = box.hi.flatten(2).scatter(2, idx, float("-inf")).view_as(box.hi)
        dom = lo_sel >= pool(others, *args)       # v_i* is the max on the whole box
    else:
        dom = torch.zeros_like(lo_sel, dtype=torch.bool)
    pos, neg = a.clamp_min(0), a.clamp_max(0)
    coef = pos + neg * dom.unsqueeze(1)
    const = (neg * torch.where(dom, 0.0, hi_max).unsqueeze(1)).flatten(2).sum(-1)
    n, s = a.shape[:2]
    out = torch.zeros((n, s) + box.lo.shape[1:2] + (box.lo[0, 0].numel(),), dtype=a.dtype, device=a.device)
    out.scatter_add_(3, idx.unsqueeze(1).expand(-1, s, -1, -1), coef.flatten(3))
    return out.view((n, s) + box.lo.shape[1:]), const


def _backward(model: nn.Module, graph: fx.Graph, env: dict[fx.Node, Any], start: fx.Node,
              a0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``a0·v_start ≥ A·x' + c`` for every ``x'`` in the input box: ``(A, c)``, A (N, S, *x)."""
    coef: dict[fx.Node, torch.Tensor] = {start: a0}
    const = a0.new_zeros(a0.shape[:2])
    a_x: torch.Tensor | None = None
    for node in reversed(graph.nodes):
        a = coef.pop(node, None)
        if a is None:
            continue
        if node.op == "placeholder":
            a_x = a
            continue
        kind = _kind(model, node)
        if kind == "affine":
            pieces, c = _affine_back(model, node, env, a)
        else:
            src = node.args[0]
            assert isinstance(src, fx.Node)
            if kind == "relu":
                a_in, c = _relu_back(a, env[src])
            else:
                a_in, c = _maxpool_back(model.get_submodule(str(node.target)), a, env[src])
            pieces = [(src, a_in)]
        const = const + c
        for n, g in pieces:
            coef[n] = coef[n] + g if n in coef else g
    if a_x is None:
        raise Unsupported("the bounded value does not depend on the input")
    return a_x, const


def _concretize(a: torch.Tensor, const: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Minimum of ``A·x' + c`` over ``B^p_ε(x) ∩ [0,1]^d`` (ℓ2: the better of box and ball)."""
    lo, hi = (x - eps).clamp(0.0, 1.0), (x + eps).clamp(0.0, 1.0)
    af = a.flatten(2)
    mid, rad = ((hi + lo) / 2).flatten(1).unsqueeze(1), ((hi - lo) / 2).flatten(1).unsqueeze(1)
    m = (af * mid).sum(-1) - (af.abs() * rad).sum(-1)
    if norm == "l2":
        m = torch.maximum(m, (af * x.flatten(1).unsqueeze(1)).sum(-1) - eps * af.norm(dim=-1))
    return m + const


def _nonlinear_inputs(model: nn.Module, graph: fx.Graph) -> dict[fx.Node, bool]:
    """The inputs of the ReLU / max-pool nodes in forward order, each with whether all the
    nonlinear nodes it feeds are ReLUs (then only its unstable neurons need bounds)."""
    out: dict[fx.Node, bool] = {}
    for node in graph.nodes:
        if node.op in ("call_module", "call_function", "call_method") and _kind(model, node) != "affine":
            src = node.args[0]
            if isinstance(src, fx.Node):
                out[src] = out.get(src, True) and _kind(model, node) == "relu"
    return out


def _tighten(model: nn.Module, graph: fx.Graph, env: dict[fx.Node, Any], x: torch.Tensor,
             eps: float, norm: str) -> None:
    """Full CROWN: every nonlinear input's box ∩ its CROWN bounds (forward order, in place;
    a ReLU input only on the neurons unstable in some sample: the others are exact)."""
    for node, relu_only in _nonlinear_inputs(model, graph).items():
        b = env[node]
        n, shape = b.lo.shape[0], b.lo.shape[1:]
        lo, hi = b.lo.flatten(1).clone(), b.hi.flatten(1).clone()
        idx = torch.arange(lo.shape[1], device=x.device)
        if relu_only:
            idx = idx[((lo < 0) & (hi > 0)).any(0)]
        k = idx.numel()
        if k == 0:
            continue
        eye = torch.zeros(k, lo.shape[1], dtype=x.dtype, device=x.device)
        eye[torch.arange(k, device=x.device), idx] = 1.0
        a0 = torch.cat([eye, -eye]).view((1, 2 * k) + shape).expand((n, 2 * k) + shape)
        bound = _concretize(*_backward(model, graph, env, node, a0), x, eps, norm)
        lo[:, idx] = torch.maximum(lo[:, idx], bound[:, :k])
        hi[:, idx] = torch.minimum(hi[:, idx], -bound[:, k:])
        env[node] = Box(lo.view_as(b.lo), hi.view_as(b.hi))


def _chunk(model: nn.Module, x: torch.Tensor, pred: torch.Tensor, eps: float, norm: str,
           intermediate: str) -> torch.Tensor:
    _, graph, env = walk_boxes(model, x, eps, norm)
    out_node = next(n for n in graph.nodes if n.op == "output").args[0]
    assert isinstance(out_node, fx.Node)
    if intermediate == "crown":
        _tighten(model, graph, env, x, eps, norm)
    z = env[out_node].lo
    k = z.shape[1]
    eye = torch.eye(k, dtype=z.dtype, device=z.device)
    c = eye[pred].unsqueeze(1) - eye.unsqueeze(0)                   # (N, K, K): e_y - e_j
    m = _concretize(*_backward(model, graph, env, out_node, c), x, eps, norm)
    return m.scatter(1, pred.view(-1, 1), float("inf")).amin(dim=1)


@torch.no_grad()
def crown_margin_lower_bound(model: nn.Module, x: torch.Tensor, pred: torch.Tensor, eps: float,
                             norm: str = "linf", intermediate: str = "ibp",
                             budget: int = 1 << 24) -> torch.Tensor | None:
    """A sound lower bound of ``min_{t≠y} min_{x' ∈ B^p_ε(x) ∩ [0,1]^d} z_y(x') - z_t(x')``
    per sample (N,) by CROWN (module doc), or ``None`` when the model is not supported.
    Samples go in chunks of about ``budget`` coefficient elements. The caller puts the
    model in eval mode."""
    if intermediate not in INTERMEDIATE:
        raise ValueError(f"intermediate must be one of {INTERMEDIATE}, not {intermediate!r}")
    try:
        _, graph, env = walk_boxes(model, x[:1], eps, norm)
        sizes = [v.lo[0].numel() for v in env.values() if isinstance(v, Box)]
        specs = max(sizes) * 2 if intermediate == "crown" else env[
            next(n for n in graph.nodes if n.op == "output").args[0]].lo.shape[1]
        step = max(1, budget // (specs * max(sizes)))
        return torch.cat([_chunk(model, x[i:i + step], pred[i:i + step], eps, norm, intermediate)
                          for i in range(0, x.shape[0], step)])
    except Exception:   # Unsupported, or a node the walk cannot evaluate: no bound
        return None


__all__ = ["crown_margin_lower_bound", "INTERMEDIATE"]
