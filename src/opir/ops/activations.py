"""Gated-MLP activations: ``act(gate) * up``. The native functions are the contract.

Layouts. The merged ops take vLLM's ``x = [gate | up]`` (``d = x.shape[-1] // 2``,
``gate = x[..., :d]``, ``up = x[..., d:]``; an odd last dim is an error);
``swigluoai_and_mul`` takes gpt-oss's interleaved ``gate = x[..., ::2]``,
``up = x[..., 1::2]``. ``silu_mul`` / ``gelu_mul`` take Hugging Face's separate
``gate`` and ``up`` tensors (same shape, dtype and device) without concatenating.
The output has shape ``[..., d]`` and x's dtype.

Numerics (where each rounding happens; ``T`` is x's dtype, fp32/bf16/fp16):

* the activation ``act(gate)`` (silu, gelu erf, gelu tanh, and swigluoai's
  ``gate * sigmoid(alpha * gate)``) is computed in fp64 from the exact input
  and converted once to ``T`` (as torch converts), so it does not depend on
  layout, vector width or thread split (torch's own fp32/bf16 CPU activations
  do). GELU-tanh is computed as ``g / (1 + exp(-2y))``, ``y = sqrt(2/pi) * (g +
  0.044715 g^3)``: the same function as torch's ``0.5 g (1 + tanh(y))``, which in
  fp64 cancels for g below about -5 and there depends on which fp64 ``tanh`` ran;
* the product ``act * up`` is computed in ``T`` (one more rounding; the exact
  product of two bf16/fp16 values fits in fp32, so it is correctly rounded).

The cpu provider is bit-identical to these functions in bf16 and fp16 and within
the fp32 tolerance in fp32; see docs/activations.md for every op's details.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from opir.core.register import register_op

APPROXIMATIONS = ("none", "tanh")


def check_x(x: torch.Tensor, op: str) -> None:
    """Reject inputs no activation op defines (non-float, 0-d, odd last dim)."""
    if not x.dtype.is_floating_point:
        raise ValueError(f"{op}: x must be a floating-point tensor, got {x.dtype}")
    if x.dim() < 1:
        raise ValueError(f"{op}: x must have at least one dimension ([..., 2 * d])")
    if x.shape[-1] % 2:
        raise ValueError(
            f"{op}: x's last dim must be even (gate and up halves of d each), got "
            f"{x.shape[-1]}; pass x of shape [..., 2 * d]"
        )


def check_gate_up(gate: torch.Tensor, up: torch.Tensor, op: str) -> None:
    """Separate gate/up tensors: floating point, one shape, dtype and device."""
    if not gate.dtype.is_floating_point:
        raise ValueError(f"{op}: gate must be a floating-point tensor, got {gate.dtype}")
    if gate.shape != up.shape or gate.dtype != up.dtype or gate.device != up.device:
        raise ValueError(
            f"{op}: gate and up must have the same shape, dtype and device; got "
            f"{list(gate.shape)} {gate.dtype} {gate.device} vs "
            f"{list(up.shape)} {up.dtype} {up.device}"
        )


def check_approximate(approximate: str, op: str) -> None:
    if approximate not in APPROXIMATIONS:
        raise ValueError(
            f"{op}: approximate must be one of {APPROXIMATIONS} (GELU erf or tanh), "
            f"got {approximate!r}"
        )


def _f64(t: torch.Tensor) -> torch.Tensor:
    # A contiguous fp64 copy: torch's fp64 kernels then see one layout whatever x's was.
    return t.to(torch.float64, memory_format=torch.contiguous_format)


SQRT_2_OVER_PI = 0.7978845608028654  # fp64 sqrt(2 / pi), torch's kBeta
GELU_TANH_KAPPA = 0.044715


def gelu_tanh_f64(g: torch.Tensor) -> torch.Tensor:
    """GELU-tanh of an fp64 tensor as ``g / (1 + exp(-2y))``, ``y = sqrt(2/pi) (g + 0.044715
    g^3)``: equal to torch's ``0.5 g (1 + tanh(y))`` (``(1 + tanh y) / 2 = sigmoid(2y)``).

    Why not torch's form: for g below about -5, ``1 + tanh(y)`` cancels (it is below
    fp64's resolution from g ~ -7.15), so its value is the error of whichever fp64
    ``tanh`` ran: ATen's vectorised tanh returns -1 from |y| > 18.71, its scalar tail a
    correctly rounded one only from 19.06, so ``F.gelu(x, approximate="tanh")`` in fp64
    gives 0 or not depending on an element's position, where the true value (about
    ``g e^(2y)``, 1e-16) is representable in bf16 and fp32. Here every step is
    well-conditioned: ``exp`` and the division are accurate to an ulp or two in both
    tails (relative error about ``|2y|`` fp64 ulps from y's rounding) and near 0
    (``1 + exp(-2y)`` is about 2). Keep the operation order: kernels repeat it.
    """
    y = SQRT_2_OVER_PI * (g + GELU_TANH_KAPPA * g * g * g)
    return g / (1.0 + torch.exp(-2.0 * y))


def activation(gate: torch.Tensor, kind: str) -> torch.Tensor:
    """``act(gate)`` computed in fp64 and converted once to gate's dtype.

    ``kind`` is "silu", "gelu" (erf) or "gelu_tanh" (``gelu_tanh_f64``). Shared by every
    op of the family (and by kernels' tests as the definition of the rounded activation).
    """
    g = _f64(gate)
    if kind == "silu":
        a = F.silu(g)
    elif kind == "gelu":
        a = F.gelu(g)
    elif kind == "gelu_tanh":
        a = gelu_tanh_f64(g)
    else:
        raise ValueError(f"unknown activation {kind!r}; expected 'silu', 'gelu' or 'gelu_tanh'")
    return a.to(gate.dtype)


def _gelu_kind(approximate: str) -> str:
    return "gelu" if approximate == "none" else "gelu_tanh"


def _halves(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    d = x.shape[-1] // 2
    return x[..., :d], x[..., d:]


@register_op
def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` with ``x = [gate | up]``: silu in fp64 rounded once to x's
    dtype, then the product in x's dtype (one more rounding)."""
    check_x(x, "silu_and_mul")
    gate, up = _halves(x)
    return activation(gate, "silu") * up


@register_op
def mul_and_silu(x: torch.Tensor) -> torch.Tensor:
    """``x[..., :d] * silu(x[..., d:])``: the activation is on the second half.
    Rounding as ``silu_and_mul``."""
    check_x(x, "mul_and_silu")
    first, second = _halves(x)
    return first * activation(second, "silu")


@register_op
def gelu_and_mul(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """``gelu(gate, approximate) * up`` with ``x = [gate | up]``; ``approximate`` is
    "none" (erf) or "tanh". GELU in fp64 rounded once to x's dtype, then the product."""
    check_x(x, "gelu_and_mul")
    check_approximate(approximate, "gelu_and_mul")
    gate, up = _halves(x)
    return activation(gate, _gelu_kind(approximate)) * up


@register_op
def fatrelu_and_mul(x: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """``(gate if gate > threshold else 0) * up``; the comparison is exact (fp64), so a
    threshold that x's dtype cannot represent is not rounded first. NaN gates give 0.
    The only rounding is the product's, in x's dtype."""
    check_x(x, "fatrelu_and_mul")
    gate, up = _halves(x)
    kept = torch.where(_f64(gate) > threshold, gate, torch.zeros((), dtype=x.dtype))
    return kept * up


@register_op
def gelu_and_mul_sparse(
    x: torch.Tensor, std_multiplier: float, approximate: str = "none"
) -> torch.Tensor:
    """vLLM 0.32's sparse GELU-and-mul (Gemma 3n): per row of ``gate``,
    ``cutoff = mean + std * std_multiplier`` (population std), then
    ``gelu(relu(gate - cutoff)) * up``.

    Precision: mean, std, cutoff and ``gate - cutoff`` in fp64; ``relu(gate - cutoff)``
    rounded once to x's dtype (vLLM's native rounds it there too); GELU of that value in
    fp64 rounded once to x's dtype; the product in x's dtype. (vLLM's native also rounds
    mean, std and cutoff to x's dtype; this contract does not.)
    """
    check_x(x, "gelu_and_mul_sparse")
    check_approximate(approximate, "gelu_and_mul_sparse")
    gate, up = _halves(x)
    g = _f64(gate)
    mean = g.mean(dim=-1, keepdim=True)
    std = (g - mean).square().mean(dim=-1, keepdim=True).sqrt()  # population std
    shifted = torch.relu(g - (mean + std * std_multiplier)).to(x.dtype)
    return activation(shifted, _gelu_kind(approximate)) * up


@register_op
def swigluoai_and_mul(x: torch.Tensor, alpha: float = 1.702, limit: float = 7.0) -> torch.Tensor:
    """gpt-oss's clamped SwiGLU on interleaved ``gate = x[..., ::2]``, ``up = x[..., 1::2]``:
    ``(clamp(up, -limit, limit) + 1) * (g * sigmoid(g * alpha))`` with ``g = min(gate, limit)``.

    Precision: ``g * sigmoid(g * alpha)`` in fp64 from the exact clamped gate, rounded once
    to x's dtype; ``clamp(up, -limit, limit)`` is exact then rounded to x's dtype (a limit
    the dtype cannot represent rounds); ``+ 1`` in x's dtype (rounds, as Hugging Face and
    vLLM do); the product in x's dtype, in that grouping.
    """
    check_x(x, "swigluoai_and_mul")
    gate, up = x[..., ::2], x[..., 1::2]
    g = _f64(gate).clamp(max=limit)
    glu = (g * torch.sigmoid(g * alpha)).to(x.dtype)
    up1 = _f64(up).clamp(-limit, limit).to(x.dtype) + 1
    return up1 * glu


@register_op(activations=("gate", "up"))
def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` for separate tensors (Hugging Face's ``act_fn(gate_proj(x)) *
    up_proj(x)``); rounding as ``silu_and_mul``."""
    check_gate_up(gate, up, "silu_mul")
    return activation(gate, "silu") * up


@register_op(activations=("gate", "up"))
def gelu_mul(gate: torch.Tensor, up: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """``gelu(gate, approximate) * up`` for separate tensors; rounding as ``gelu_and_mul``."""
    check_gate_up(gate, up, "gelu_mul")
    check_approximate(approximate, "gelu_mul")
    return activation(gate, _gelu_kind(approximate)) * up


def _merged(*, dtype, device, generator, num_tokens: int = 4, hidden_size: int = 64):
    """x of shape [num_tokens, 2 * hidden_size]: ``hidden_size`` is the MLP's
    intermediate size d (the output width)."""
    x = torch.randn(num_tokens, 2 * hidden_size, generator=generator, device=device)
    return (2.0 * x).to(dtype)


@silu_and_mul.register_input_generator
def _silu_and_mul_inputs(**kw):
    return (_merged(**kw),)


@mul_and_silu.register_input_generator
def _mul_and_silu_inputs(**kw):
    return (_merged(**kw),)


@gelu_and_mul.register_input_generator
def _gelu_and_mul_inputs(*, approximate: str = "none", **kw):
    return _merged(**kw), approximate


@fatrelu_and_mul.register_input_generator
def _fatrelu_and_mul_inputs(*, threshold: float = 0.5, **kw):
    return _merged(**kw), threshold


@gelu_and_mul_sparse.register_input_generator
def _gelu_and_mul_sparse_inputs(*, std_multiplier: float = 1.6448536269514722, **kw):
    # 1.6449 = the standard normal's 95% quantile: Gemma 3n's activation_sparsity 0.95.
    return _merged(**kw), std_multiplier


@swigluoai_and_mul.register_input_generator
def _swigluoai_and_mul_inputs(*, alpha: float = 1.702, limit: float = 7.0, **kw):
    return _merged(**kw), alpha, limit


def _separate(*, dtype, device, generator, num_tokens: int = 4, hidden_size: int = 64):
    gate = torch.randn(num_tokens, hidden_size, generator=generator, device=device)
    up = torch.randn(num_tokens, hidden_size, generator=generator, device=device)
    return (2.0 * gate).to(dtype), (2.0 * up).to(dtype)


@silu_mul.register_input_generator
def _silu_mul_inputs(**kw):
    return _separate(**kw)


@gelu_mul.register_input_generator
def _gelu_mul_inputs(*, approximate: str = "none", **kw):
    return (*_separate(**kw), approximate)


OPS = (
    silu_and_mul,
    mul_and_silu,
    gelu_and_mul,
    fatrelu_and_mul,
    gelu_and_mul_sparse,
    swigluoai_and_mul,
    silu_mul,
    gelu_mul,
)

# Kernels that cannot use the correctly rounded activation (Triton's exp/erf/tanh) may be
# 1 ulp off in it; the product's rounding can add half an ulp more. bf16's default rtol
# (1.6e-2, two ulps) covers that; fp16's (1e-3, one ulp) does not, so fp16 allows two.
# swigluoai rounds twice more (the clamp is exact, but "+ 1" and the glu round).
for _op in OPS:
    _op.override_tolerance(torch.float16, atol=1e-3, rtol=2e-3)
