"""Interval bounds of a model's values over the threat model, on a ``torch.fx`` trace.

A model built of the layers below, in any wiring (chains, residual additions, reshapes), is
traced once with :func:`torch.fx.symbolic_trace` and its graph is walked node by node with
interval arithmetic (IBP, Gowal et al. 2018, "On the effectiveness of interval bound
propagation for training verifiably robust models"): every value ``v(x')`` gets a box
``lo ≤ v(x') ≤ hi`` valid for every ``x'`` in ``B^p_ε(x) ∩ [0, 1]^d`` (pixel space):

* **affine layers** (``Linear``, ``Conv1d``, ``Conv2d``; ``BatchNorm1d/2d`` in eval mode,
  :class:`abstain.models.Normalize`, average pooling, ``mean``) in centre/radius form
  ``mid' = W mid + b``, ``rad' = |W| rad``;
* **monotone maps** (``ReLU``, max pooling, ``Flatten``/``view``/``reshape``/``permute``/
  slicing, ``Identity``, ``Dropout`` in eval mode, ``torch.cat``) on both ends;
* **sums** ``a + b`` / ``a - b`` of two bounded values (residual additions) and sums or
  products with constants.

**ℓ2 balls.** The input box is the ℓ∞ box enclosing ``B²_ε(x)``; in addition, a value that
is still an element-wise affine map ``s ⊙ x' + c`` of the input (after ``Normalize``, eval
BatchNorm, reshapes) keeps ``s``, and at the first dense affine layer ``a·x' + c`` the ball
gives ``a·x + c ± ε·||a||₂`` exactly (``||a||₂² = (W²) ∗ s²``, the same layer applied to
the squares, padding included). Both intervals are sound, so is their intersection.

A node of any other kind (an unknown module or function, a BatchNorm in training mode, a
``Conv`` with non-zero padding mode, data-dependent control flow that the trace refuses)
makes :func:`trace_intervals` return ``None``: the model is not bounded and nothing is
proven, never a wrong bound. Tracing runs the model's Python ``forward`` on proxies once per
model (cached while its module tree is unchanged; attributes that ``forward`` rebinds, such
as call counters, are restored afterwards); the layers are looked up on the model at every
call, so updated weights are always used.
"""
from __future__ import annotations

import operator
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..ibp import _affine as _ibp_affine
from ..ibp import batchnorm_affine
from ..ibp import _per_channel
from ..models import Normalize


@dataclass
class Box:
    """Interval ``[lo, hi]`` of a value (N, ...); ``diag`` = ``(c, s)`` while the value is
    exactly ``s ⊙ x' + c`` in the input ``x'`` (``c`` its value at ``x``; ℓ2 only)."""

    lo: torch.Tensor
    hi: torch.Tensor
    diag: tuple[torch.Tensor, torch.Tensor] | None = None


class Unsupported(Exception):
    """A node the interval walk does not handle (the model gets no bound)."""


class _Tracer(fx.Tracer):
    """torch.nn layers and :class:`Normalize` stay leaves (their ``forward`` branches on the
    input's rank, which a proxy cannot answer)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, Normalize) or super().is_leaf_module(m, qualname)


_CACHE: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple[int, ...], fx.Graph | None]]" = \
    weakref.WeakKeyDictionary()


def _structure(model: nn.Module) -> tuple[int, ...]:
    return tuple(id(m) for m in model.modules())


def graph_of(model: nn.Module) -> fx.Graph | None:
    """The fx graph of ``model`` (``None`` if it cannot be traced), cached per model while
    its module tree (the identity of every submodule) stays the same."""
    key = _structure(model)
    hit = _CACHE.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    saved = [(m, dict(m.__dict__)) for m in model.modules()]
    try:
        graph: fx.Graph | None = _Tracer().trace(model)
    except Exception:   # data-dependent control flow, untraceable code: no bound
        graph = None
    finally:   # the trace ran ``forward`` on proxies: undo attributes it rebound (counters)
        for m, d in saved:
            m.__dict__.clear()
            m.__dict__.update(d)
    try:
        _CACHE[model] = (key, graph)
    except TypeError:   # not weak-referenceable: trace again next time
        pass
    return graph


# ----------------------------------------------------------------------------- interval maps
def _dense(b: Box, weight: torch.Tensor, bias: torch.Tensor | None, op: Callable, eps: float) -> Box:
    """A dense affine layer; on an element-wise affine value of the input (ℓ2) also the
    exact range over the ball, intersected with the interval one."""
    out = Box(*_ibp_affine(b.lo, b.hi, weight, bias, op))   # centre/radius (abstain.ibp)
    if b.diag is not None:
        c, s = b.diag
        centre = op(c, weight, bias)
        rad = eps * op(s * s, weight * weight, None).clamp_min(0).sqrt()
        out = Box(torch.maximum(out.lo, centre - rad), torch.minimum(out.hi, centre + rad))
    return out


def _channel(b: Box, scale: torch.Tensor, shift: torch.Tensor) -> Box:
    """``v ↦ scale·v + shift`` per channel (dim 1)."""
    scale, shift = scale.to(b.lo.dtype), shift.to(b.lo.dtype)
    lo, hi = _per_channel(b.lo, b.hi, scale, shift)
    if b.diag is None:
        return Box(lo, hi)
    shape = (1, -1) + (1,) * (b.lo.dim() - 2)
    return Box(lo, hi, (b.diag[0] * scale.view(shape) + shift.view(shape), b.diag[1] * scale.view(shape)))


def _monotone(b: Box, f: Callable[[torch.Tensor], torch.Tensor], keeps_diag: bool = False) -> Box:
    """A non-decreasing element-wise map or a rearrangement of the elements (``keeps_diag``:
    a pure rearrangement, which keeps an element-wise affine form)."""
    diag = (f(b.diag[0]), f(b.diag[1])) if keeps_diag and b.diag is not None else None
    return Box(f(b.lo), f(b.hi), diag)


def _batchnorm(m: nn.modules.batchnorm._BatchNorm, b: Box) -> Box:
    if m.training or m.running_mean is None or m.running_var is None:
        raise Unsupported(f"{type(m).__name__} not in eval mode with running statistics")
    return _channel(b, *batchnorm_affine(m))


def _conv_op(m: nn.Conv1d | nn.Conv2d) -> Callable:
    if m.padding_mode != "zeros":
        raise Unsupported(f"{type(m).__name__} with padding_mode={m.padding_mode!r}")
    conv = F.conv1d if isinstance(m, nn.Conv1d) else F.conv2d
    return lambda inp, w, bias: conv(inp, w, bias, m.stride, m.padding, m.dilation, m.groups)


_REARRANGE = (nn.Flatten, nn.Identity, nn.Unflatten)
_MONO_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
                 nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)


def _module(m: nn.Module, b: Box, eps: float) -> Box:
    """Interval image of ``b`` under the leaf module ``m``."""
    if isinstance(m, nn.Linear):
        return _dense(b, m.weight, m.bias, F.linear, eps)
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        return _dense(b, m.weight, m.bias, _conv_op(m), eps)
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return _batchnorm(m, b)
    if isinstance(m, Normalize):
        return _channel(b, 1.0 / m.std, -m.mean / m.std)
    if isinstance(m, nn.ReLU):            # never in place: the boxes of other nodes share tensors
        return _monotone(b, torch.relu)
    if isinstance(m, _REARRANGE) or (isinstance(m, nn.Dropout) and not m.training):
        return _monotone(b, m, keeps_diag=True)
    if isinstance(m, _MONO_MODULES):   # average pools: non-negative weights, monotone
        return _monotone(b, m)
    raise Unsupported(f"module {type(m).__name__}")


_MONO_FUNCS = {F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d,
               F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, torch.mean}
_REARRANGE_FUNCS = {torch.flatten, torch.reshape, torch.permute, torch.transpose, operator.getitem}
_MONO_METHODS = {"mean"}
_REARRANGE_METHODS = {"view", "reshape", "flatten", "permute", "transpose", "contiguous",
                      "squeeze", "unsqueeze", "__getitem__"}
_SHAPE_METHODS = {"size", "dim"}
_SHAPE_ATTRS = {"shape", "ndim", "dtype", "device"}


def _binary(op: Any, a: Any, b: Any) -> Any:
    """``a + b``, ``a - b``, ``a * c``, ``a / c`` with at most two boxes (a sum of two)."""
    if not isinstance(a, Box) and not isinstance(b, Box):
        return op(a, b)
    if op in (operator.add, torch.add, operator.sub, torch.sub):
        sub = op in (operator.sub, torch.sub)
        if isinstance(a, Box) and isinstance(b, Box):
            return Box(a.lo - b.hi, a.hi - b.lo) if sub else Box(a.lo + b.lo, a.hi + b.hi)
        if isinstance(a, Box):          # box ± constant
            c = -b if sub else b
            return Box(a.lo + c, a.hi + c, None if a.diag is None else (a.diag[0] + c, a.diag[1]))
        neg = _scale(b, -1.0) if sub else b   # constant ± box
        return Box(neg.lo + a, neg.hi + a, None if neg.diag is None else (neg.diag[0] + a, neg.diag[1]))
    if op in (operator.mul, torch.mul):
        if isinstance(a, Box) and isinstance(b, Box):
            raise Unsupported("product of two bounded values")
        return _scale(a, b) if isinstance(a, Box) else _scale(b, a)
    if op in (operator.truediv, torch.div) and isinstance(a, Box) and not isinstance(b, Box):
        return _scale(a, 1.0 / b)
    raise Unsupported(f"operation {getattr(op, '__name__', op)}")


def _scale(b: Box, c: Any) -> Box:
    """``c · v`` for a constant ``c`` (a number or a tensor that broadcasts)."""
    if isinstance(c, torch.Tensor) and c.requires_grad:
        c = c.detach()
    lo, hi = b.lo * c, b.hi * c
    diag = None if b.diag is None else (b.diag[0] * c, b.diag[1] * c)
    return Box(torch.minimum(lo, hi), torch.maximum(lo, hi), diag)


def _weights(fn: Any, args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    """Weight, bias and the other keyword arguments of ``F.linear`` / ``F.conv*d``."""
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    bound = dict(zip(names, args))
    bound.update(kwargs)
    w, bias = bound.pop("weight"), bound.pop("bias", None)
    bound.pop("input")
    if not isinstance(w, torch.Tensor) or (bias is not None and not isinstance(bias, torch.Tensor)):
        raise Unsupported("weights that are not constants")
    if fn is F.linear and bound:
        raise Unsupported("F.linear with extra arguments")
    return w.detach(), None if bias is None else bias.detach(), bound


def _call(fn: Any, args: tuple, kwargs: dict, eps: float) -> Any:
    flat = [a for a in args] + list(kwargs.values())
    flat += [p for a in flat if isinstance(a, (list, tuple)) for p in a]
    boxes = [a for a in flat if isinstance(a, Box)]
    if not boxes:
        return fn(*args, **kwargs)
    if fn is getattr and len(args) == 2 and args[1] in _SHAPE_ATTRS:   # x.shape etc.
        return getattr(args[0].lo, args[1])
    if fn in (operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub,
              torch.mul, torch.div) and not kwargs and len(args) == 2:
        return _binary(fn, *args)
    if fn is torch.cat:
        parts = args[0] if args else kwargs.get("tensors")
        if not all(isinstance(p, Box) for p in parts):
            raise Unsupported("cat of bounded and constant values")
        rest = {k: v for k, v in kwargs.items() if k != "tensors"}
        return Box(torch.cat([p.lo for p in parts], *args[1:], **rest),
                   torch.cat([p.hi for p in parts], *args[1:], **rest))
    if len(boxes) != 1 or not isinstance(args[0], Box) or any(isinstance(a, Box) for a in args[1:]):
        raise Unsupported(f"function {getattr(fn, '__name__', fn)}")
    b = args[0]
    if fn in (F.linear, F.conv1d, F.conv2d):   # a layer called as a function (constant weights)
        w, bias, rest = _weights(fn, args, kwargs)
        if fn is F.linear:
            return _dense(b, w, bias, F.linear, eps)
        conv = fn
        return _dense(b, w, bias, lambda inp, w_, b_: conv(inp, w_, b_, **rest), eps)
    if fn in (F.relu, torch.relu):
        return _monotone(b, torch.relu)
    if fn in _REARRANGE_FUNCS:
        return _monotone(b, lambda t: fn(t, *args[1:], **kwargs), keeps_diag=True)
    if fn in _MONO_FUNCS:
        return _monotone(b, lambda t: fn(t, *args[1:], **kwargs))
    raise Unsupported(f"function {getattr(fn, '__name__', fn)}")


def _method(name: str, args: tuple, kwargs: dict) -> Any:
    self, rest = args[0], args[1:]
    if not isinstance(self, Box):
        if any(isinstance(a, Box) for a in rest) or any(isinstance(v, Box) for v in kwargs.values()):
            raise Unsupported(f"method {name} of a constant on a bounded value")
        return getattr(self, name)(*rest, **kwargs)
    if any(isinstance(a, Box) for a in rest):
        if name in ("add", "sub", "mul", "div") and not kwargs and len(rest) == 1:
            op = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv}[name]
            return _binary(op, self, rest[0])
        raise Unsupported(f"method {name} of two bounded values")
    if name in _SHAPE_METHODS:
        return getattr(self.lo, name)(*rest, **kwargs)
    if name in ("add", "sub", "mul", "div") and not kwargs and len(rest) == 1:
        op = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv}[name]
        return _binary(op, self, rest[0])
    if name in _REARRANGE_METHODS:
        return _monotone(self, lambda t: getattr(t, name)(*rest, **kwargs), keeps_diag=True)
    if name == "relu":
        return _monotone(self, torch.relu)
    if name in _MONO_METHODS:
        return _monotone(self, lambda t: getattr(t, name)(*rest, **kwargs))
    raise Unsupported(f"method {name}")


# ----------------------------------------------------------------------------- the walk
@dataclass
class Traced:
    """The box of the model's output and, when the output is a linear layer, its
    ``(weight, bias)`` and the box of its input (so a margin can be bounded through it
    exactly)."""

    out: Box
    last: tuple[torch.Tensor, torch.Tensor | None] | None
    last_in: Box | None


@torch.no_grad()
def trace_intervals(model: nn.Module, x: torch.Tensor, eps: float, norm: str = "linf") -> Traced | None:
    """Interval bounds of every value of ``model`` over ``B^p_ε(x) ∩ [0, 1]^d`` (pixel space,
    ``norm`` in {"linf", "l2"}), walking its fx graph; ``None`` if the model cannot be traced
    or has a node this module does not handle (see the module doc). The caller puts the
    model in eval mode."""
    try:
        return _walk(model, x, eps, norm)
    except Exception:   # Unsupported, or a node whose arguments the walk cannot evaluate
        return None


@torch.no_grad()
def why_unbounded(model: nn.Module, x: torch.Tensor, eps: float = 0.0, norm: str = "linf") -> str | None:
    """Why :func:`trace_intervals` gives ``model`` no bound (one line), or ``None`` if it does."""
    try:
        _walk(model, x, eps, norm)
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


def _walk(model: nn.Module, x: torch.Tensor, eps: float, norm: str) -> Traced:
    return walk_boxes(model, x, eps, norm)[0]


def walk_boxes(model: nn.Module, x: torch.Tensor, eps: float, norm: str
               ) -> tuple[Traced, fx.Graph, dict[fx.Node, Any]]:
    """The walk behind :func:`trace_intervals`: ``(traced, graph, env)``, ``env`` the value
    of every node (a :class:`Box` for a bounded value, else the constant). Raises
    :class:`Unsupported` (or the error of a node it cannot evaluate) instead of ``None``."""
    graph = graph_of(model)
    if graph is None:
        raise Unsupported("the model cannot be traced by torch.fx")
    lo, hi = (x - eps).clamp(0.0, 1.0), (x + eps).clamp(0.0, 1.0)
    inp = Box(lo, hi, (x, torch.ones_like(x)) if norm == "l2" else None)
    env: dict[fx.Node, Any] = {}
    linear_in: dict[fx.Node, tuple[torch.Tensor, torch.Tensor | None, Box]] = {}
    n_inputs = 0
    out_node: fx.Node | None = None
    for node in graph.nodes:
        args = fx.node.map_arg(node.args, lambda n: env[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
        if node.op == "placeholder":
            n_inputs += 1
            if n_inputs > 1:
                raise Unsupported("more than one input")
            env[node] = inp
        elif node.op == "get_attr":
            val = model
            for part in str(node.target).split("."):
                val = getattr(val, part)
            env[node] = val.detach() if isinstance(val, torch.Tensor) else val
        elif node.op == "call_module":
            m = model.get_submodule(str(node.target))
            if len(args) != 1 or kwargs or not isinstance(args[0], Box):
                raise Unsupported(f"module {node.target} called on {len(args)} arguments")
            if isinstance(m, nn.Linear):
                linear_in[node] = (m.weight, m.bias, args[0])
            env[node] = _module(m, args[0], eps)
        elif node.op == "call_function":
            env[node] = _call(node.target, args, kwargs, eps)
            if node.target is F.linear and isinstance(args[0], Box):
                w, bias, _ = _weights(F.linear, args, kwargs)
                linear_in[node] = (w, bias, args[0])
        elif node.op == "call_method":
            env[node] = _method(str(node.target), args, kwargs)
        elif node.op == "output":
            out_node = node.args[0] if isinstance(node.args[0], fx.Node) else None
        else:
            raise Unsupported(f"node {node.op}")
    if out_node is None or not isinstance(env[out_node], Box):
        raise Unsupported("the output is not one tensor")
    out = env[out_node]
    if out.lo.shape[0] != x.shape[0] or out.lo.dim() != 2:
        raise Unsupported(f"the output has shape {tuple(out.lo.shape)}, not (N, K)")
    if out_node in linear_in:
        w, bias, last_in = linear_in[out_node]
        return Traced(out, (w, bias), last_in), graph, env
    return Traced(out, None, None), graph, env


__all__ = ["Box", "Traced", "trace_intervals", "why_unbounded", "graph_of", "walk_boxes"]
