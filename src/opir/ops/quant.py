"""Activation quantisation (fp8 e4m3fn / e4m3fnuz, int8), the fused norm/activation ->
quant ops, and the ``scaled_mm`` consumer. The native functions are the contract;
docs/quantization.md has the table of every rule.

Quantisation of an fp32 value ``v = f32(x)`` with an fp32 scale ``s`` (``MAX`` is 448
for ``float8_e4m3fn``, 224 for ``float8_e4m3fnuz``, 127 for ``int8``)::

    inv = f32(1 / s)                 # the fp32 reciprocal, correctly rounded
    y = f32(v * inv)                 # multiply, never divide
    fp8:  q = cast(clamp(y, -MAX, MAX))             # torch's round-to-nearest-even cast
    int8: q = cast(clamp(round_half_even(y), -128, 127)), NaN -> 0

The clamp comes before the cast on every device (torch's CPU cast saturates
e4m3fn but gives NaN for fnuz past 240, and an fp32 -> int8 cast of an
out-of-range value is undefined).

Dynamic scales: ``s = max(absmax / MAX, 1 / (MAX * 512))`` in fp32 for every dtype,
int8 included (an all-zero row gets ``1 / (MAX * 512)``, never 0). ``scale_ub``
clamps the absmax first: ``absmax = min(absmax, scale_ub)``. ``scale_ue8m0`` rounds
the scale up to a power of two (a power of two stays).

Non-finite inputs: the absmax propagates NaN (a NaN anywhere in a row / group /
tensor makes its scale NaN, so every q of it is NaN in fp8 and 0 in int8); ±inf
(without NaN) makes the scale +inf, so ``inv`` is 0: finite values give ±0 and
the infs NaN (fp8) / 0 (int8). Either way ``q * scale`` is NaN for the whole
row/group: a non-finite input never dequantises to finite numbers. With a static
scale ±inf saturates to ±MAX (int8: 127 / -128) and NaN gives NaN (fp8) / 0 (int8).

Scales are fp32: per tensor shape ``[1]``, per token ``x.shape[:-1] + (1,)``, per
group ``x.shape[:-1] + (K // group_size,)`` (``column_major_scales``: the storage is
``[K // group_size, M]``, M the number of rows, viewed as ``(M, K // group_size)``).
"""

from __future__ import annotations

import math

import torch

from opir.core.op import Op
from opir.core.register import register_op
from opir.ops.activations import check_x as check_merged_x
from opir.ops.activations import silu_and_mul
from opir.ops.norms import fused_add_rms_norm, rms_norm

QUANT_MAX: dict[torch.dtype, float] = {
    torch.float8_e4m3fn: 448.0,
    torch.float8_e4m3fnuz: 224.0,  # vLLM's choice over finfo's 240 (accuracy on ROCm)
    torch.int8: 127.0,
}
QUANT_DTYPES = tuple(QUANT_MAX)
INT8_MIN, INT8_MAX = -128.0, 127.0
GROUP_SIZES = (64, 128)
BLOCK = 128  # scaled_mm's block-scale granularity (DeepSeek-style 128 x 128 weight blocks)
SCALE_DTYPE = torch.float32


def _min_scale(qmax: float) -> float:
    # 1 / (MAX * 512) as an fp32 division (exactly the value an fp32 kernel computes).
    one = torch.tensor(1.0, dtype=torch.float32)
    return float(one / torch.tensor(qmax * 512.0, dtype=torch.float32))


MIN_SCALE: dict[torch.dtype, float] = {d: _min_scale(m) for d, m in QUANT_MAX.items()}


# ---------------------------------------------------------------------------------------
# input checks (natives and launchers call them)


def check_quant_dtype(dtype: object, op: str, name: str = "dtype") -> None:
    """``dtype`` is one of the quantised dtypes (fp8 e4m3fn, fp8 e4m3fnuz, int8)."""
    if dtype not in QUANT_MAX:
        raise ValueError(
            f"{op}: {name} must be one of torch.float8_e4m3fn, torch.float8_e4m3fnuz, "
            f"torch.int8, got {dtype!r}"
        )


def check_float_x(x: torch.Tensor, op: str, name: str = "x") -> None:
    """``x`` is a floating-point (fp32/bf16/fp16) tensor with at least one dim."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{op}: {name} must be a tensor, got {type(x).__name__}")
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(
            f"{op}: {name} must be a float32, bfloat16 or float16 tensor, got {x.dtype}"
        )
    if x.dim() < 1:
        raise ValueError(f"{op}: {name} must have at least one dimension ([..., K])")


def check_static_scale(scale: torch.Tensor, x: torch.Tensor, op: str, name: str = "scale") -> None:
    """A per-tensor scale: fp32, one element (shape [1] or []), on x's device.
    (Its value must be finite and > 0; checking it would need a device sync.)"""
    if not isinstance(scale, torch.Tensor):
        raise ValueError(f"{op}: {name} must be a float32 tensor of shape [1], got {scale!r}")
    if scale.dtype != SCALE_DTYPE:
        raise ValueError(f"{op}: {name} must be float32, got {scale.dtype}; pass scale.float()")
    if scale.numel() != 1 or scale.dim() > 1:
        raise ValueError(
            f"{op}: {name} must be a per-tensor scale of shape [1], got {list(scale.shape)}"
        )
    if scale.device != x.device:
        raise ValueError(f"{op}: {name} is on {scale.device} but x is on {x.device}")


def check_scale_ub(scale_ub: torch.Tensor | None, x: torch.Tensor, op: str) -> None:
    if scale_ub is not None:
        check_static_scale(scale_ub, x, op, "scale_ub")


def check_group_size(group_size: int, k: int, op: str) -> None:
    """``group_size`` is 64 or 128 and divides x's last dim ``k``."""
    if isinstance(group_size, bool) or group_size not in GROUP_SIZES:
        raise ValueError(f"{op}: group_size must be 64 or 128, got {group_size!r}")
    if k % group_size:
        raise ValueError(
            f"{op}: group_size {group_size} must divide x's last dim, got {k}; pad K to a "
            f"multiple of {group_size}"
        )


# ---------------------------------------------------------------------------------------
# the arithmetic (shared by every native; kernels repeat it)


def quantize_with_inv(y32: torch.Tensor, inv: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``cast(clamp(round?(y32 * inv)))``: ``y32`` fp32, ``inv`` the fp32 reciprocal scale
    (broadcastable). int8 rounds half to even and maps NaN to 0."""
    y = y32 * inv
    if dtype == torch.int8:
        y = torch.round(y).clamp(INT8_MIN, INT8_MAX)
        return torch.where(torch.isnan(y), torch.zeros((), dtype=y.dtype), y).to(dtype)
    m = QUANT_MAX[dtype]
    return y.clamp(-m, m).to(dtype)


def reciprocal(scale: torch.Tensor) -> torch.Tensor:
    """The fp32 reciprocal of an fp32 scale (IEEE division, correctly rounded)."""
    return torch.reciprocal(scale.to(SCALE_DTYPE))


def scale_from_absmax(
    absmax: torch.Tensor, dtype: torch.dtype, scale_ub: torch.Tensor | None = None
) -> torch.Tensor:
    """``max(min(absmax, scale_ub) / MAX, 1 / (MAX * 512))`` in fp32; NaN propagates."""
    if scale_ub is not None:
        absmax = torch.minimum(absmax, scale_ub.reshape(()).to(absmax.device))
    scale = absmax / QUANT_MAX[dtype]
    return torch.clamp(scale, min=MIN_SCALE[dtype])  # clamp keeps NaN


def round_up_pow2(scale: torch.Tensor) -> torch.Tensor:
    """The fp32 power of two at or above each positive normal ``scale`` (exact;
    non-finite scales stay). ``s = m * 2**e`` with ``m`` in [0.5, 1): ``s`` if
    ``m == 0.5``, else ``2**e``."""
    m, e = torch.frexp(scale)
    bits = (e.to(torch.int32) + 127) << 23
    up = bits.view(torch.float32)
    up = torch.where(m == 0.5, scale, up)
    return torch.where(torch.isfinite(scale), up, scale)


def _absmax_rows(x32: torch.Tensor) -> torch.Tensor:
    if x32.shape[-1] == 0:
        return torch.zeros((*x32.shape[:-1], 1), dtype=SCALE_DTYPE, device=x32.device)
    return x32.abs().amax(dim=-1, keepdim=True)


# ---------------------------------------------------------------------------------------
# base ops


@register_op
def static_quant(x: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Quantise with a per-tensor fp32 ``scale`` ([1]): ``cast(clamp(round?(f32(x) *
    f32(1/scale))))``; q has x's shape."""
    op = "static_quant"
    check_float_x(x, op)
    check_quant_dtype(dtype, op)
    check_static_scale(scale, x, op)
    return quantize_with_inv(x.float(), reciprocal(scale).reshape(()), dtype)


@register_op
def dynamic_quant(
    x: torch.Tensor,
    dtype: torch.dtype,
    per_token: bool = True,
    scale_ub: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, scale)`` with ``scale = max(min(absmax, scale_ub) / MAX, 1/(MAX*512))`` per
    token (shape ``x.shape[:-1] + (1,)``) or per tensor (``per_token=False``, shape [1])."""
    op = "dynamic_quant"
    check_float_x(x, op)
    check_quant_dtype(dtype, op)
    check_scale_ub(scale_ub, x, op)
    x32 = x.float()
    if per_token:
        absmax = _absmax_rows(x32)
    elif x32.numel() == 0:
        absmax = torch.zeros(1, dtype=SCALE_DTYPE, device=x.device)
    else:
        absmax = x32.abs().amax().reshape(1)
    scale = scale_from_absmax(absmax, dtype, scale_ub)
    inv = reciprocal(scale) if per_token else reciprocal(scale).reshape(())
    return quantize_with_inv(x32, inv, dtype), scale


@register_op
def dynamic_group_quant(
    x: torch.Tensor,
    dtype: torch.dtype,
    group_size: int = 128,
    column_major_scales: bool = False,
    scale_ue8m0: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, scales)``, one scale per ``group_size`` (64 or 128) consecutive elements of
    the last dim: shape ``x.shape[:-1] + (K // group_size,)``; ``column_major_scales``
    stores them as ``[K // group_size, M]`` (M rows) viewed as ``(M, K // group_size)``;
    ``scale_ue8m0`` rounds each scale up to a power of two."""
    op = "dynamic_group_quant"
    check_float_x(x, op)
    check_quant_dtype(dtype, op)
    k = x.shape[-1]
    check_group_size(group_size, k, op)
    lead = x.shape[:-1]
    groups = k // group_size
    x32 = x.float().reshape(*lead, groups, group_size)
    scale = scale_from_absmax(_absmax_rows(x32), dtype)  # [..., G, 1]
    if scale_ue8m0:
        scale = round_up_pow2(scale)
    q = quantize_with_inv(x32, reciprocal(scale), dtype).reshape(x.shape)
    scale = scale.reshape(*lead, groups)
    if column_major_scales:
        rows = math.prod(lead)
        storage = torch.empty(groups, rows, dtype=SCALE_DTYPE, device=x.device)
        storage.copy_(scale.reshape(rows, groups).t())
        scale = storage.t().unflatten(0, lead) if lead else storage.t().reshape(groups)
    return q, scale


# ---------------------------------------------------------------------------------------
# fused ops: literally the composition of opir's natives (the intermediate is rounded
# to x's dtype, as the unfused sequence rounds it)


@register_op
def rms_norm_quant(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    epsilon: float,
    scale: torch.Tensor,
    dtype: torch.dtype,
    weight_bias: float = 0.0,
) -> torch.Tensor:
    """``static_quant(rms_norm(x, weight, epsilon, weight_bias=weight_bias), scale, dtype)``."""
    check_quant_dtype(dtype, "rms_norm_quant")
    check_static_scale(scale, x, "rms_norm_quant")
    y = rms_norm.native(x, weight, epsilon, None, weight_bias)
    return static_quant.native(y, scale, dtype)


@register_op
def rms_norm_dynamic_quant(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    epsilon: float,
    dtype: torch.dtype,
    scale_ub: torch.Tensor | None = None,
    weight_bias: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``dynamic_quant(rms_norm(x, weight, epsilon, weight_bias=...), dtype, True, scale_ub)``
    (per-token scales)."""
    check_quant_dtype(dtype, "rms_norm_dynamic_quant")
    check_scale_ub(scale_ub, x, "rms_norm_dynamic_quant")
    y = rms_norm.native(x, weight, epsilon, None, weight_bias)
    return dynamic_quant.native(y, dtype, True, scale_ub)


@register_op
def rms_norm_group_quant(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    epsilon: float,
    dtype: torch.dtype,
    group_size: int = 128,
    column_major_scales: bool = False,
    scale_ue8m0: bool = False,
    weight_bias: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``dynamic_group_quant(rms_norm(x, weight, epsilon, weight_bias=...), dtype,
    group_size, column_major_scales, scale_ue8m0)``."""
    op = "rms_norm_group_quant"
    check_quant_dtype(dtype, op)
    if isinstance(x, torch.Tensor) and x.dim() >= 1:
        check_group_size(group_size, x.shape[-1], op)
    y = rms_norm.native(x, weight, epsilon, None, weight_bias)
    return dynamic_group_quant.native(y, dtype, group_size, column_major_scales, scale_ue8m0)


@register_op(activations=("x_residual",), allow_inplace=True)
def fused_add_rms_norm_quant(
    x: torch.Tensor,
    x_residual: torch.Tensor,
    weight: torch.Tensor | None,
    epsilon: float,
    scale: torch.Tensor,
    dtype: torch.dtype,
    weight_bias: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``out, residual = fused_add_rms_norm(x, x_residual, weight, epsilon,
    weight_bias=...)``; returns ``(static_quant(out, scale, dtype), residual)``.
    ``maybe_inplace`` donates ``x_residual`` (a kernel may write the new residual there)."""
    check_quant_dtype(dtype, "fused_add_rms_norm_quant")
    check_static_scale(scale, x, "fused_add_rms_norm_quant")
    out, residual = fused_add_rms_norm.native(x, x_residual, weight, epsilon, None, weight_bias)
    return static_quant.native(out, scale, dtype), residual


@register_op(activations=("x_residual",), allow_inplace=True)
def fused_add_rms_norm_dynamic_quant(
    x: torch.Tensor,
    x_residual: torch.Tensor,
    weight: torch.Tensor | None,
    epsilon: float,
    dtype: torch.dtype,
    scale_ub: torch.Tensor | None = None,
    weight_bias: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``out, residual = fused_add_rms_norm(...)``; returns ``(*dynamic_quant(out, dtype,
    True, scale_ub), residual)``: ``(q, per-token scale, residual)``."""
    check_quant_dtype(dtype, "fused_add_rms_norm_dynamic_quant")
    check_scale_ub(scale_ub, x, "fused_add_rms_norm_dynamic_quant")
    out, residual = fused_add_rms_norm.native(x, x_residual, weight, epsilon, None, weight_bias)
    q, scale = dynamic_quant.native(out, dtype, True, scale_ub)
    return q, scale, residual


@register_op
def silu_and_mul_quant(x: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``static_quant(silu_and_mul(x), scale, dtype)``; x is ``[..., 2 * d]``, q ``[..., d]``."""
    check_merged_x(x, "silu_and_mul_quant")
    check_quant_dtype(dtype, "silu_and_mul_quant")
    check_static_scale(scale, x, "silu_and_mul_quant")
    return static_quant.native(silu_and_mul.native(x), scale, dtype)


@register_op
def silu_and_mul_dynamic_quant(
    x: torch.Tensor, dtype: torch.dtype, scale_ub: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``dynamic_quant(silu_and_mul(x), dtype, True, scale_ub)`` (per-token scales)."""
    check_merged_x(x, "silu_and_mul_dynamic_quant")
    check_quant_dtype(dtype, "silu_and_mul_dynamic_quant")
    check_scale_ub(scale_ub, x, "silu_and_mul_dynamic_quant")
    return dynamic_quant.native(silu_and_mul.native(x), dtype, True, scale_ub)


# ---------------------------------------------------------------------------------------
# the consumer


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def check_scaled_mm_args(
    a: torch.Tensor,
    a_scale: torch.Tensor,
    b: torch.Tensor,
    b_scale: torch.Tensor,
    out_dtype: torch.dtype,
    bias: torch.Tensor | None,
) -> bool:
    """``scaled_mm``'s contract; returns whether the scales are 128-blocks (a [1, 1]
    b_scale is per tensor; with K and N <= 128 block scales are the plain ones)."""
    op = "scaled_mm"
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            raise ValueError(f"{op}: {name} must be a 2-D tensor ({name} is [M, K] / [K, N])")
        check_quant_dtype(t.dtype, op, f"{name}.dtype")
    if a.dtype != b.dtype:
        raise ValueError(f"{op}: a and b must have one dtype, got {a.dtype} and {b.dtype}")
    if a.device != b.device:
        raise ValueError(f"{op}: a is on {a.device} but b is on {b.device}")
    (m, k), (k2, n) = a.shape, b.shape
    if k != k2:
        raise ValueError(
            f"{op}: a is [M, K] = {list(a.shape)} and b must be [K, N], got {list(b.shape)} "
            "(pass w_q.t() for a [N, K] weight)"
        )
    if out_dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(
            f"{op}: out_dtype must be torch.float32, torch.bfloat16 or torch.float16, "
            f"got {out_dtype!r}"
        )
    for name, s in (("a_scale", a_scale), ("b_scale", b_scale)):
        if not isinstance(s, torch.Tensor) or s.dtype != SCALE_DTYPE:
            got = s.dtype if isinstance(s, torch.Tensor) else type(s).__name__
            raise ValueError(f"{op}: {name} must be a float32 tensor, got {got}")
        if s.device != a.device:
            raise ValueError(f"{op}: {name} is on {s.device} but a is on {a.device}")
    kb, nb = _cdiv(k, BLOCK), _cdiv(n, BLOCK)
    sa, sb = tuple(a_scale.shape), tuple(b_scale.shape)
    plain = (sa == (1,) or sa == (m, 1)) and (sb == (1,) or sb == (1, 1) or sb == (1, n))
    block = not plain and sa == (m, kb) and sb == (kb, nb)
    if not (plain or block):
        raise ValueError(
            f"{op}: a_scale must be [1] or [M, 1] = [{m}, 1] and b_scale [1] or [1, N] = "
            f"[1, {n}], or both 128-block scales a_scale [M, ceil(K/128)] = [{m}, {kb}] and "
            f"b_scale [ceil(K/128), ceil(N/128)] = [{kb}, {nb}]; got {list(a_scale.shape)} and "
            f"{list(b_scale.shape)}"
        )
    if bias is not None and (
        bias.shape != (n,) or bias.dtype != out_dtype or bias.device != a.device
    ):
        raise ValueError(
            f"{op}: bias must be [N] = [{n}] of out_dtype {out_dtype} on {a.device}; got "
            f"{list(bias.shape)} {bias.dtype} {bias.device}"
        )
    return block


@register_op(activations=("a", "b"))
def scaled_mm(
    a: torch.Tensor,
    a_scale: torch.Tensor,
    b: torch.Tensor,
    b_scale: torch.Tensor,
    out_dtype: torch.dtype,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(a * a_scale) @ (b * b_scale) + bias`` rounded once to ``out_dtype``.

    ``a`` [M, K] and ``b`` [K, N] quantised (one dtype; pass ``w_q.t()`` for a [N, K]
    weight); ``a_scale`` [1] or [M, 1], ``b_scale`` [1] or [1, N], or 128-block scales
    ``a_scale`` [M, ceil(K/128)] with ``b_scale`` [ceil(K/128), ceil(N/128)]. Computed in
    fp64: ``a @ b`` (per block) is exact (int8 and fp8 products and their sums fit
    fp64's mantissa), then times the scales, plus the bias, then one rounding.
    """
    block = check_scaled_mm_args(a, a_scale, b, b_scale, out_dtype, bias)
    a64, b64 = a.to(torch.float64), b.to(torch.float64)
    sa, sb = a_scale.to(torch.float64), b_scale.to(torch.float64)
    if not block:
        out = (a64 @ b64) * sa * sb
    else:
        (m, k), n = a.shape, b.shape[1]
        kb, pad_k = _cdiv(k, BLOCK), _cdiv(k, BLOCK) * BLOCK - k
        a64 = torch.nn.functional.pad(a64, (0, pad_k)).reshape(m, kb, BLOCK).transpose(0, 1)
        b64 = torch.nn.functional.pad(b64, (0, 0, 0, pad_k)).reshape(kb, BLOCK, n)
        partial = torch.bmm(a64, b64)  # [kb, M, N], exact
        sb_full = sb.repeat_interleave(BLOCK, dim=1)[:, :n]  # [kb, N]
        out = (partial * sa.t().unsqueeze(-1) * sb_full.unsqueeze(1)).sum(dim=0)
    if bias is not None:
        out = out + bias.to(torch.float64)
    return out.to(out_dtype)


# ---------------------------------------------------------------------------------------
# input generators (``opir check``, tests, benchmarks). ``dtype`` is x's dtype; the
# quantised dtype is ``quant_dtype`` (int8 by default: the dtype every machine runs).


def _static_scale(quant_dtype: torch.dtype, device, amax: float = 3.0) -> torch.Tensor:
    # amax 3 over N(0, 1)-ish values: most in range, the tails saturate (tests the clamp)
    return torch.tensor([amax / QUANT_MAX[quant_dtype]], dtype=SCALE_DTYPE, device=device)


def _x(dtype, device, generator, num_tokens: int, hidden_size: int, spread: float = 2.0):
    x = torch.randn(num_tokens, hidden_size, generator=generator, device=device)
    return (spread * x).to(dtype)


@static_quant.register_input_generator
def _static_quant_inputs(*, dtype, device, generator, num_tokens=4, hidden_size=64,
                         quant_dtype=torch.int8):  # fmt: skip
    x = _x(dtype, device, generator, num_tokens, hidden_size)
    return x, _static_scale(quant_dtype, device, 6.0), quant_dtype


@dynamic_quant.register_input_generator
def _dynamic_quant_inputs(*, dtype, device, generator, num_tokens=4, hidden_size=64,
                          quant_dtype=torch.int8, per_token=True):  # fmt: skip
    return _x(dtype, device, generator, num_tokens, hidden_size), quant_dtype, per_token, None


def _grouped_hidden(hidden_size: int, group_size: int) -> int:
    return group_size * max(1, _cdiv(hidden_size, group_size))


@dynamic_group_quant.register_input_generator
def _dynamic_group_quant_inputs(*, dtype, device, generator, num_tokens=4, hidden_size=128,
                                quant_dtype=torch.int8, group_size=64,
                                column_major_scales=False, scale_ue8m0=False):  # fmt: skip
    x = _x(dtype, device, generator, num_tokens, _grouped_hidden(hidden_size, group_size))
    return x, quant_dtype, group_size, column_major_scales, scale_ue8m0


def _norm_args(dtype, device, generator, num_tokens, hidden_size, weight_dtype, has_weight):
    x = _x(dtype, device, generator, num_tokens, hidden_size, spread=1.0)
    weight = None
    if has_weight:
        w = 1.0 + 0.1 * torch.randn(hidden_size, generator=generator, device=device)
        weight = w.to(weight_dtype or dtype)
    return x, weight


@rms_norm_quant.register_input_generator
def _rms_norm_quant_inputs(*, dtype, device, generator, num_tokens=4, hidden_size=64,
                           quant_dtype=torch.int8, weight_dtype=None, has_weight=True,
                           epsilon=1e-6, weight_bias=0.0):  # fmt: skip
    x, w = _norm_args(dtype, device, generator, num_tokens, hidden_size, weight_dtype, has_weight)
    return x, w, epsilon, _static_scale(quant_dtype, device), quant_dtype, weight_bias


@rms_norm_dynamic_quant.register_input_generator
def _rms_norm_dynamic_quant_inputs(*, dtype, device, generator, num_tokens=4, hidden_size=64,
                                   quant_dtype=torch.int8, weight_dtype=None, has_weight=True,
                                   epsilon=1e-6, weight_bias=0.0):  # fmt: skip
    x, w = _norm_args(dtype, device, generator, num_tokens, hidden_size, weight_dtype, has_weight)
    return x, w, epsilon, quant_dtype, None, weight_bias


@rms_norm_group_quant.register_input_generator
def _rms_norm_group_quant_inputs(*, dtype, device, generator, num_tokens=4, hidden_size=128,
                                 quant_dtype=torch.int8, weight_dtype=None, has_weight=True,
                                 epsilon=1e-6, group_size=64, column_major_scales=False,
                                 scale_ue8m0=False, weight_bias=0.0):  # fmt: skip
    hidden = _grouped_hidden(hidden_size, group_size)
    x, w = _norm_args(dtype, device, generator, num_tokens, hidden, weight_dtype, has_weight)
    return (x, w, epsilon, quant_dtype, group_size, column_major_scales, scale_ue8m0,
            weight_bias)  # fmt: skip


@fused_add_rms_norm_quant.register_input_generator
def _fused_add_rms_norm_quant_inputs(*, dtype, device, generator, num_tokens=4,
                                     hidden_size=64, quant_dtype=torch.int8, weight_dtype=None,
                                     has_weight=True, epsilon=1e-6, weight_bias=0.0):  # fmt: skip
    x, w = _norm_args(dtype, device, generator, num_tokens, hidden_size, weight_dtype, has_weight)
    r = _x(dtype, device, generator, num_tokens, hidden_size, spread=1.0)
    return x, r, w, epsilon, _static_scale(quant_dtype, device, 4.0), quant_dtype, weight_bias


@fused_add_rms_norm_dynamic_quant.register_input_generator
def _fused_add_rms_norm_dynamic_quant_inputs(*, dtype, device, generator, num_tokens=4,
                                             hidden_size=64, quant_dtype=torch.int8,
                                             weight_dtype=None, has_weight=True, epsilon=1e-6,
                                             weight_bias=0.0):  # fmt: skip
    x, w = _norm_args(dtype, device, generator, num_tokens, hidden_size, weight_dtype, has_weight)
    r = _x(dtype, device, generator, num_tokens, hidden_size, spread=1.0)
    return x, r, w, epsilon, quant_dtype, None, weight_bias


@silu_and_mul_quant.register_input_generator
def _silu_and_mul_quant_inputs(*, dtype, device, generator, num_tokens=4, hidden_size=64,
                               quant_dtype=torch.int8):  # fmt: skip
    x = _x(dtype, device, generator, num_tokens, 2 * hidden_size)
    return x, _static_scale(quant_dtype, device, 4.0), quant_dtype


@silu_and_mul_dynamic_quant.register_input_generator
def _silu_and_mul_dynamic_quant_inputs(*, dtype, device, generator, num_tokens=4,
                                       hidden_size=64, quant_dtype=torch.int8):  # fmt: skip
    return _x(dtype, device, generator, num_tokens, 2 * hidden_size), quant_dtype, None


@scaled_mm.register_input_generator
def _scaled_mm_inputs(*, dtype, device, generator, num_tokens=4, hidden_size=64,
                      quant_dtype=torch.int8, out_features=None, scales="token",
                      has_bias=True):  # fmt: skip
    """``dtype`` is out_dtype; a [num_tokens, hidden_size], b [hidden_size, out_features];
    ``scales``: "tensor" ([1] and [1]), "token" ([M, 1] and [1, N]) or "block"."""
    m, k = num_tokens, hidden_size
    n = out_features if out_features is not None else max(1, hidden_size // 2)
    x = torch.randn(m, k, generator=generator, device=device)
    w = torch.randn(k, n, generator=generator, device=device) * 0.05
    if scales == "block":
        kb, nb = _cdiv(k, BLOCK), _cdiv(n, BLOCK)
        a, sa = dynamic_group_quant.native(
            torch.nn.functional.pad(x, (0, kb * BLOCK - k)), quant_dtype, BLOCK
        )
        a = a[:, :k]
        sb = 0.01 + 0.01 * torch.rand(kb, nb, generator=generator, device=device)
        sb_full = sb.repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)[:k, :n]
        b = quantize_with_inv(w, reciprocal(sb_full), quant_dtype)
    else:
        a, sa = dynamic_quant.native(x, quant_dtype, scales == "token")
        amax_w = w.abs().amax(dim=0, keepdim=True) if scales == "token" else w.abs().amax()
        sb = scale_from_absmax(amax_w.reshape(1, n) if scales == "token" else amax_w.reshape(1),
                               quant_dtype)  # fmt: skip
        b = quantize_with_inv(w, reciprocal(sb), quant_dtype)
    bias = None
    if has_bias:
        bias = torch.randn(n, generator=generator, device=device).to(dtype)
    return a, sa, b, sb, dtype, bias


# ---------------------------------------------------------------------------------------
# tolerances (by output dtype; int8 outputs compare exactly unless an op sets one)

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e4m3fnuz)
BASE_OPS = (static_quant, dynamic_quant, dynamic_group_quant)
FUSED_OPS = (
    rms_norm_quant,
    rms_norm_dynamic_quant,
    rms_norm_group_quant,
    fused_add_rms_norm_quant,
    fused_add_rms_norm_dynamic_quant,
    silu_and_mul_quant,
    silu_and_mul_dynamic_quant,
)
OPS = (*BASE_OPS, *FUSED_OPS, scaled_mm)

# Base ops: a kernel that follows the contract (absmax, correctly rounded division and
# reciprocal, one fp32 multiply, clamp, RNE) is bit-identical: fp8 outputs compare exactly.
for _op in BASE_OPS:
    for _d in FP8_DTYPES:
        _op.override_tolerance(_d, atol=0.0, rtol=0.0)


# Fused ops: a kernel's intermediate (the norm's fp32 rms in another summation order, a
# Triton silu) may differ from native's by an ulp or two of x's dtype, and that can move
# q by one quantum: one fp8 step (at most 1/8 relative, 2**-9 absolute near zero) or one
# int8 step; the dynamic scale (absmax / MAX) by up to 2**-7 relative (one bf16 ulp).
def set_fused_tolerances(op: Op) -> None:
    """The tolerances of a fused norm/activation -> quant op (see above)."""
    for d in FP8_DTYPES:
        op.override_tolerance(d, atol=2.0**-9, rtol=0.125)
    op.override_tolerance(torch.int8, atol=1.0, rtol=0.0)
    op.override_tolerance(torch.float32, atol=1e-5, rtol=2.0**-7)
    op.override_tolerance(torch.float16, atol=1e-3, rtol=2e-3)


for _fused in FUSED_OPS:
    set_fused_tolerances(_fused)

# scaled_mm: kernels accumulate exactly (int32 / fp32 MMA) and run an fp32 epilogue
# (convert, times a_scale, times b_scale, plus bias: four fp32 roundings) before the
# final rounding: bf16/fp16 may differ by one ulp (their defaults cover it); fp32 by a
# few fp32 ulps of the magnitudes involved.
scaled_mm.override_tolerance(torch.float32, atol=1e-4, rtol=1e-5)
