"""The ``flashinfer`` provider's ``rotary_embedding`` (launchers: ``kernels.py``).

``rotary_embedding`` -> ``flashinfer.rope.apply_rope_with_cos_sin_cache_inplace``
(registered in place: a ``maybe_inplace`` call rotates query and key where they
are; a functional call runs it on opir's clones). The impl belongs to
``impls.PROVIDER``.

Limits the predicate states (anything else falls through to the next provider),
from FlashInfer's own checks and its kernel's vector loads (flashinfer/rope.py,
include/flashinfer/pos_enc.cuh):

* CUDA query and key (key not None: FlashInfer rotates both) in fp16 or bf16, of
  one dtype; 2-D ``[tokens, heads * head_size]`` or 3-D with heads ``head_size``
  apart; last dim contiguous, token stride and data pointer 16-byte aligned
  (column views of a fused qkv buffer qualify);
* **an fp32, contiguous cache** (FlashInfer refuses any other), int32 or int64
  contiguous positions;
* neox style only: in GPT-J style FlashInfer's kernel loads a vector of sin
  values that runs past the end of the cache row (up to half a vector beyond the
  cache's last row), which opir's contract forbids;
* ``head_size`` 64, 128, 256 or 512 (FlashInfer's dedicated kernel; other sizes go
  through its RoPE-quantize kernel, not checked here) and ``rotary_dim`` a
  multiple of two vectors (``2 * max(8, head_size // 32)``), so no vector
  straddles the rotated and pass-through columns.

Out-of-range positions: FlashInfer reads the cache row it is given, so the
launcher clamps the positions into ``[0, max_position)`` first (one small
elementwise kernel, no host sync): never a read outside the cache, but such a
token gets a valid row's rotation, not an error (docs/rotary.md).

Rounding differs from the contract: FlashInfer multiplies by the fp32 cos/sin
and rounds once to T; the contract rounds cos/sin to T, each product, and the
sum (three roundings). Stated bound (``ROPE_BOUND_ULPS``): ``|flashinfer -
native| <= 4 * u * (|x1| + |x2|)`` per element of a pair, ``u`` the unit
roundoff of T (2**-8 bf16, 2**-11 fp16); pass-through columns are identical.
(Derived: each of the native's two product roundings and its cos/sin rounding
moves a term by at most ``u`` of it, both results round once more.) A CPU
emulation measured at most 2.24 u (|x1| + |x2|) on 4096 x 8 x 128 inputs.
The op's ``assert_close`` tolerance cannot express a bound relative to the
inputs, so the GPU test holds the impl to this rule with ``rope_bound``.
"""

from __future__ import annotations

import torch

from opir.ops.rotary import rotary_embedding
from opir.providers.flashinfer.impls import PROVIDER

_DTYPES = (torch.float16, torch.bfloat16)
_HEAD_SIZES = (64, 128, 256, 512)
ROPE_BOUND_ULPS = 4
"""FlashInfer's rotation differs from the native by at most this many unit
roundoffs of T times ``|x1| + |x2|`` (see the module docstring)."""

UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11, torch.float32: 2.0**-24}


def _aligned(t: torch.Tensor) -> bool:
    return t.data_ptr() % 16 == 0 and t.stride(0) % 8 == 0


def _layout_ok(t: torch.Tensor, head_size: int) -> bool:
    if t.stride(-1) != 1:
        return False
    if t.dim() == 3 and t.stride(1) != head_size:
        return False
    return t.dim() in (2, 3) and _aligned(t)


def supports_rotary_embedding(
    positions, query, key, head_size, cos_sin_cache, is_neox_style, rotary_dim=None
) -> bool:
    if key is None or not is_neox_style or head_size not in _HEAD_SIZES:
        return False
    dtype = query.dtype
    if dtype not in _DTYPES or not query.is_cuda or key.dtype is not dtype:
        return False
    if cos_sin_cache.dtype is not torch.float32 or not cos_sin_cache.is_contiguous():
        return False
    if positions.dtype not in (torch.int32, torch.int64) or not positions.is_contiguous():
        return False
    rd = cos_sin_cache.shape[-1]
    if rd == 0 or rd % (2 * max(8, head_size // 32)) or cos_sin_cache.data_ptr() % 16:
        return False
    return _layout_ok(query, head_size) and _layout_ok(key, head_size)


def rope_bound(x: torch.Tensor, head_size: int, rotary_dim: int) -> torch.Tensor:
    """The stated bound on ``|flashinfer - native|`` per element of ``x`` (neox style):
    ``ROPE_BOUND_ULPS * u * (|x1| + |x2|)`` on the rotated columns, 0 on the rest."""
    heads = x.float().reshape(x.shape[0], -1, head_size).abs()
    half = rotary_dim // 2
    pair = heads[..., :half] + heads[..., half:rotary_dim]
    bound = torch.zeros_like(heads)
    scale = ROPE_BOUND_ULPS * UNIT_ROUNDOFF[x.dtype]
    bound[..., :half] = scale * pair
    bound[..., half:rotary_dim] = scale * pair
    return bound.reshape(x.shape)


PROVIDER.register(rotary_embedding, supports_rotary_embedding, inplace=True)
