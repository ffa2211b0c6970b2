"""Quantized activations for training: PQA (PMSM), QCFS (the baseline) and the ReLU swap.

PQA, the Polarity Quantized Activation (paper Eq. 2, equations.md §2)::

    s = λ / L                                     step (λ learnable, L fixed)
    k = clip( floor(x / s + 1/2), αL, βL )         signed integer level, α < 0 < β
    y = k · s

QCFS (Bu et al. 2022, equations.md §7) is the same map with α = 0, β = 1: levels 0..L.

The forward pass uses exactly this op order (Div, Add ½, Floor, Clip, Mul) because the ONNX
function body of ``pmsm::PQA`` and the AIF neuron's first step perform the same float operations;
that is what makes the SNN at T = 1 reproduce the quantized ANN bit for bit.

Gradients (straight-through rounding, λ through autograd as in QCFS, equations.md §2.2), with
u = x/λ and q = y/λ:

    ∂y/∂x = 1[α ≤ u ≤ β]
    ∂y/∂λ = q − u · 1[α ≤ u ≤ β]          (β above the range, α below it)

Both are computed in one fused ``autograd.Function`` rather than as a chain of tensor ops,
because the activation is memory-bound on a CPU and every extra pass costs training time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from pmsm_compiler.defaults import LAMBDA_MIN, PQA_ALPHA, PQA_BETA, PQA_DEFAULTS, PQA_LAMBDA, PQA_LEVELS



def integer_bound(fraction: float, levels: int, name: str) -> int:
    """αL or βL as an integer level; the method needs them to be integers (equations.md §2.1)."""
    value = fraction * levels
    k = round(value)
    if abs(value - k) > 1e-6:
        raise ValueError(f"{name}·L must be an integer level, got {name}={fraction}, L={levels} ({value})")
    return int(k)


class _QuantizeFunction(torch.autograd.Function):
    """y = s·clip(floor(x/s + ½), k_min, k_max), s = λ/L, with the STE gradients above.

    The forward pass also keeps what the backward pass needs, as float tensors: the mask
    1[αλ ≤ x ≤ βλ] (clamp(x, αλ, βλ) == x, written in place as 1.0 / 0.0) and the residual
    y − x·mask (λ times the ∂y/∂λ term). The backward pass is then one multiply for ∂x and one
    multiply-sum for ∂λ; boolean masks and ``torch.where`` cost several times a float multiply
    on a CPU (bench/train_step.py).
    """

    @staticmethod
    def forward(ctx, x, lam, levels: int, k_min: int, k_max: int):
        step = lam / levels
        k = torch.div(x, step).add_(0.5).floor_().clamp_(k_min, k_max)
        y = k.mul_(step)
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            inside = torch.clamp(x, lam * (k_min / levels), lam * (k_max / levels)).eq_(x)
            residual = torch.addcmul(y, x, inside, value=-1) if ctx.needs_input_grad[1] else None
            ctx.save_for_backward(inside, residual, lam)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        inside, residual, lam = ctx.saved_tensors
        grad_x = grad_y * inside if ctx.needs_input_grad[0] else None
        grad_lam = None
        if ctx.needs_input_grad[1]:
            # Σ g·(q − u·1[inside]) = Σ g·(y − x·1[inside]) / λ
            grad_lam = (torch.sum(grad_y * residual) / lam).reshape(lam.shape)
        return grad_x, grad_lam, None, None, None


def quantize_reference(x: torch.Tensor, lam: torch.Tensor, levels: int, k_min: int, k_max: int):
    """The formula written plainly (no fusion), for tests and for exporters that trace plain ops."""
    step = lam / levels
    return torch.clamp(torch.floor(x / step + 0.5), k_min, k_max) * step


class _QuantizedActivation(nn.Module):
    onnx_op = ""

    def __init__(self, levels: int, lam: float, k_min: int, k_max: int, learn_lambda: bool = True):
        super().__init__()
        if levels < 1:
            raise ValueError(f"L must be >= 1, got {levels}")
        if not lam > 0:
            raise ValueError(f"λ must be > 0, got {lam}")
        if not k_min <= 0 < k_max:
            raise ValueError(f"need k_min <= 0 < k_max, got [{k_min}, {k_max}]")
        self.levels = int(levels)
        self.k_min = int(k_min)
        self.k_max = int(k_max)
        # 0-d so that it exports as a scalar initializer, as the ONNX function expects.
        self.lam = nn.Parameter(torch.tensor(float(lam)), requires_grad=learn_lambda)
        # the spike-cost rule this layer records while training (pmsm_compiler.training.spike_cost), if any
        self.spike_cost: str | None = None
        self.last_cost = None
        self.last_neurons = 0

    @property
    def alpha(self) -> float:
        return self.k_min / self.levels

    @property
    def beta(self) -> float:
        return self.k_max / self.levels

    @property
    def threshold(self) -> float:
        """θ = λ/L, the AIF threshold this layer converts to."""
        return float(self.lam.detach()) / self.levels

    def _onnx_attrs(self) -> dict:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            return torch.onnx.ops.symbolic(
                f"pmsm::{self.onnx_op}",
                (x, self.lam),
                attrs=self._onnx_attrs(),
                dtype=x.dtype,
                shape=x.shape,
                version=1,
            )
        if x.dtype != self.lam.dtype:
            x = x.to(self.lam.dtype)
        if self.spike_cost is not None and torch.is_grad_enabled():
            from pmsm_compiler.training.spike_cost import SpikeCost

            self.last_cost = SpikeCost.apply(x, self.lam, self.levels, self.k_min, self.k_max, self.spike_cost)
            self.last_neurons = x[0].numel()
        return _QuantizeFunction.apply(x, self.lam, self.levels, self.k_min, self.k_max)

    @torch.no_grad()
    def keep_lambda_positive(self) -> None:
        """Project λ onto [LAMBDA_MIN, ∞) (pmsm_compiler.defaults): after an optimizer step, which
        can carry a small λ through zero, where no AIF neuron exists (θ = λ/L > 0)."""
        self.lam.clamp_(min=LAMBDA_MIN)

    def levels_of(self, y: torch.Tensor) -> torch.Tensor:
        """Integer levels k of an output y of this activation (exact: y = k·s, |k| ≤ L)."""
        return torch.round(y / (self.lam.detach() / self.levels))


class PQA(_QuantizedActivation):
    """Polarity Quantized Activation: y = s·clip(floor(x/s + ½), αL, βL), s = λ/L.

    α and β are fractions of λ (α < 0 < β); αL and βL must be integers. Paper defaults
    (Table 4): L = 8, λ0 = 8, α = −0.25, β = 1, i.e. levels −2..8. α = 0 gives the unsigned
    form (levels 0..βL) that a transformer needs after a softmax or in the MLP: it still
    converts to a multi-spike AIF neuron (s_min = 0), not to QCFS's binary IF neuron.
    """

    onnx_op = "PQA"

    def __init__(self, levels: int = PQA_LEVELS, lam: float = PQA_LAMBDA, alpha: float = PQA_ALPHA,
                 beta: float = PQA_BETA,
                 learn_lambda: bool = True):
        if not alpha <= 0 < beta:
            raise ValueError(f"PQA needs α ≤ 0 < β (α < 0 for polarity), got α={alpha}, β={beta}")
        super().__init__(levels, lam, integer_bound(alpha, levels, "α"), integer_bound(beta, levels, "β"),
                         learn_lambda)

    def _onnx_attrs(self) -> dict:
        return {"L": self.levels, "alpha": float(self.alpha), "beta": float(self.beta)}

    def extra_repr(self) -> str:
        return f"L={self.levels}, λ={float(self.lam.detach()):.4g}, α={self.alpha:g}, β={self.beta:g}"


class QCFS(_QuantizedActivation):
    """QCFS quantization-clip-floor-shift (Bu et al. 2022): y = s·clip(floor(x/s + ½), 0, L)."""

    onnx_op = "QCFS"

    def __init__(self, levels: int = PQA_LEVELS, lam: float = PQA_LAMBDA, learn_lambda: bool = True):
        super().__init__(levels, lam, 0, levels, learn_lambda)

    def _onnx_attrs(self) -> dict:
        return {"L": self.levels}

    def extra_repr(self) -> str:
        return f"L={self.levels}, λ={float(self.lam.detach()):.4g}"


class ClipFloat(nn.Module):
    """The float counterpart of PQA / QCFS, for pre-training before quantization-aware fine-tuning::

        y = clip(x, αλ, βλ)          (no rounding; λ fixed, a buffer)

    PQA fine-tuned from a ReLU network starts far below it, because PQA's negative range
    [αλ, 0) passes what the ReLU zeroed (docs/training.md). A network pre-trained with this
    activation already has PQA's range: quantizing it with the same λ only rounds to steps of λ/L.
    λ is not learned here, so the activation is one fused op forward and backward
    (``F.hardtanh``), as a ReLU is; the BatchNorm before each activation sets the scale instead. ``lam`` is a buffer with
    the name PQA's λ parameter has, so ``--init-from`` hands it to the quantized network.
    """

    def __init__(self, lam: float = PQA_LAMBDA, alpha: float = PQA_ALPHA, beta: float = PQA_BETA):
        super().__init__()
        if not lam > 0:
            raise ValueError(f"λ must be > 0, got {lam}")
        if not alpha <= 0 < beta:
            raise ValueError(f"clip needs α ≤ 0 < β, got α={alpha}, β={beta}")
        self.alpha, self.beta = float(alpha), float(beta)
        self.register_buffer("lam", torch.tensor(float(lam)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lam = float(self.lam)  # read each call: a loaded or in-place-set λ takes effect at once
        return F.hardtanh(x, self.alpha * lam, self.beta * lam)

    def extra_repr(self) -> str:
        return f"λ={float(self.lam):.4g}, α={self.alpha:g}, β={self.beta:g}"


@dataclass
class ActivationSpec:
    """What activation a model uses: ``kind`` in {"pqa", "qcfs", "relu", "clip"} and its parameters.

    "clip" is the float pre-training counterpart (``ClipFloat``): α = −0.25 for PQA, α = 0 for QCFS.
    """

    kind: str = "pqa"
    levels: int = PQA_LEVELS
    lam: float = PQA_LAMBDA
    alpha: float = PQA_ALPHA
    beta: float = PQA_BETA

    def make(self) -> nn.Module:
        kind = self.kind.lower()
        if kind == "pqa":
            return PQA(self.levels, self.lam, self.alpha, self.beta)
        if kind == "qcfs":
            return QCFS(self.levels, self.lam)
        if kind == "relu":
            return nn.ReLU()
        if kind == "clip":
            return ClipFloat(self.lam, self.alpha, self.beta)
        raise ValueError(f"unknown activation {self.kind!r} (expected pqa, qcfs, relu or clip)")


def as_spec(act) -> ActivationSpec:
    if isinstance(act, ActivationSpec):
        return act
    if isinstance(act, str):
        return ActivationSpec(kind=act)
    if isinstance(act, dict):
        return ActivationSpec(**act)
    raise TypeError(f"activation must be a name, dict or ActivationSpec, got {type(act).__name__}")


def quantized_activations(model: nn.Module):
    """(name, module) of every PQA / QCFS in ``model``, in registration order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _QuantizedActivation)]


# ----------------------------------------------------------------------------------------------
# Swapping ReLUs of an arbitrary model
# ----------------------------------------------------------------------------------------------

@dataclass
class SwapReport:
    swapped: list[str] = field(default_factory=list)
    not_swapped: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"swapped {len(self.swapped)} ReLU(s)"]
        if self.not_swapped:
            lines.append(f"could not swap {len(self.not_swapped)}:")
            lines += [f"  - {item}" for item in self.not_swapped]
        return "\n".join(lines)


_RELU_FUNCS = {F.relu, torch.relu, torch.nn.functional.relu_, torch.relu_}
_RELU_METHODS = {"relu", "relu_"}


def swap_relu(model: nn.Module, act="pqa") -> SwapReport:
    """Replace every ReLU of ``model`` with a fresh quantized activation, in place.

    ``nn.ReLU`` modules are replaced directly. Functional ReLUs (``F.relu(x)``, ``torch.relu``,
    ``x.relu()``) inside ``forward`` cannot be swapped by module surgery: they are found by
    symbolic tracing (torch.fx) and, when the module traces, rewritten into calls of new
    submodules. What cannot be swapped (untraceable control flow, ReLU6, LeakyReLU, ...) is
    listed in the report, never silently ignored.
    """
    spec = as_spec(act)
    report = SwapReport()
    _swap_modules(model, spec, "", report)
    _swap_functional(model, spec, report)
    return report


def _swap_modules(module: nn.Module, spec: ActivationSpec, prefix: str, report: SwapReport):
    for name, child in list(module.named_children()):
        path = f"{prefix}{name}"
        if type(child) is nn.ReLU:
            setattr(module, name, spec.make())
            report.swapped.append(path)
        elif isinstance(child, (nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.GELU, nn.SiLU, nn.ELU)):
            report.not_swapped.append(f"{path} ({type(child).__name__}: not a ReLU, left unchanged)")
        else:
            _swap_modules(child, spec, path + ".", report)


def _swap_functional(model: nn.Module, spec: ActivationSpec, report: SwapReport):
    import torch.fx as fx

    class _ShallowTracer(fx.Tracer):
        # Every submodule is a leaf: each module's own forward() is rewritten, once.
        def is_leaf_module(self, m, qualname):
            return True

    for mod_name, module in list(model.named_modules()):
        if isinstance(module, _QuantizedActivation) or not _may_call_functional_relu(module):
            continue
        try:
            graph_module = fx.GraphModule(module, _ShallowTracer().trace(module))
        except Exception as exc:  # noqa: BLE001 - any trace failure means "could not swap"
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            report.not_swapped.append(
                f"{mod_name or type(module).__name__}: functional relu in forward(), not traceable ({reason})")
            continue
        changed = 0
        for node in list(graph_module.graph.nodes):
            is_relu = (node.op == "call_function" and node.target in _RELU_FUNCS) or (
                node.op == "call_method" and node.target in _RELU_METHODS)
            if not is_relu:
                continue
            new_name = f"pmsm_act{changed}"
            while hasattr(module, new_name) or hasattr(graph_module, new_name):
                new_name += "_"
            new_act = spec.make()
            module.add_module(new_name, new_act)
            # The graph's owning module must have the target too (fx checks call_module targets).
            graph_module.add_submodule(new_name, new_act)
            with graph_module.graph.inserting_after(node):
                new_node = graph_module.graph.call_module(new_name, (node.args[0],))
            node.replace_all_uses_with(new_node)
            graph_module.graph.erase_node(node)
            report.swapped.append(f"{mod_name + '.' if mod_name else ''}{new_name} (functional relu)")
            changed += 1
        if changed:
            graph_module.graph.lint()
            graph_module.recompile()
            # Tensor constants that fx lifted out of forward() live on the GraphModule only.
            for node in graph_module.graph.nodes:
                if node.op == "get_attr" and "." not in node.target and not hasattr(module, node.target):
                    value = getattr(graph_module, node.target)
                    if isinstance(value, torch.Tensor):
                        module.register_buffer(node.target, value, persistent=False)
            # Keep the user's class and attributes; only its forward changes.
            module.forward = graph_module.forward.__get__(module)
            # Keep the generated code alive without registering the GraphModule as a submodule
            # (that would duplicate every parameter under "_pmsm_traced." in the state_dict).
            object.__setattr__(module, "_pmsm_traced", graph_module)


def _may_call_functional_relu(module: nn.Module) -> bool:
    """Whether the module's class (forward and its helper methods) refers to a functional relu.

    Looks for ``F.relu`` / ``torch.relu`` / ``x.relu()`` / ``relu(...)`` in the source of every
    class between ``type(module)`` and ``nn.Module``; ``self.relu`` (a submodule) does not count.
    When the source cannot be read, the module is traced anyway.
    """
    import ast
    import inspect
    import textwrap

    if type(module).forward is nn.Module.forward:
        return False
    for cls in type(module).__mro__:
        if cls is nn.Module or cls is object or not issubclass(cls, nn.Module):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
        except (OSError, TypeError, SyntaxError):
            return True
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id in _RELU_METHODS:
                return True
            if isinstance(node, ast.Attribute) and node.attr in _RELU_METHODS and not (
                    isinstance(node.value, ast.Name) and node.value.id == "self"):
                return True
    return False


__all__ = [
    "PQA", "QCFS", "ClipFloat", "ActivationSpec", "PQA_DEFAULTS", "SwapReport", "swap_relu", "quantize_reference",
    "quantized_activations", "as_spec", "integer_bound",
]
