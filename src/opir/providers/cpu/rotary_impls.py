"""The ``cpu`` provider's rotary predicates and impls (kernels: ``rotary_kernels.py``).

Eager calls go straight to the launchers of ``rotary.cpp`` (pybind, no torch
dispatcher); under a dispatch mode (make_fx, FakeTensor, export) the impls
call the custom ops ``torch.ops.opir_cpu.<op>`` (``<op>_`` in place) instead.
A failing build follows the kit's load-failure policy, for this family alone.

What the kernels cover (anything else is rejected by the predicates and falls
through to the next provider):

* ``rotary_embedding`` / ``qk_norm_rope`` (in place; the functional op runs
  them on clones): CPU query/key in fp32, bf16 or fp16, 2-D or 3-D with any
  token/head strides (column views of one qkv buffer are written in place, the
  rest of the buffer untouched; a last dim with a stride runs on a contiguous
  copy written back); a cache of any float dtype and strides (cast to the
  query's dtype as the native casts it); int32/int64 positions; ``key=None``
  for ``rotary_embedding``; q/k norm weights in fp32, bf16 or fp16.
* ``rotary_pos_emb`` / ``qk_norm_rotary_pos_emb`` (new outputs, q's layout when
  q is dense): 4-D q/k, 3-D cos/sin, all four of one dtype (fp32, bf16, fp16;
  other dtypes promote in the native), last dims contiguous, ``unsqueeze_dim``
  1 or 2.

Numerics: the rotation is bit-identical to the native in every dtype (each
product rounded to the query's dtype before the add, no FMA). The q/k-norm ops
sum squares in another order than torch's reduction: held to rms_norm's
tolerance (see rotary.cpp). Invalid inputs pass the predicates and are
rejected by the kernels before any memory is touched, with the native's
ValueError (positions out of range included).
"""

from __future__ import annotations

import torch

from opir.ops.rotary import qk_norm_rope, qk_norm_rotary_pos_emb, rotary_embedding, rotary_pos_emb
from opir.providers.cpu.impls import family_provider

# Its own Provider of 'cpu' (see family_provider): rotary.cpp is built on the first
# rotary call, and a failed build withdraws the rotary ops only.
PROVIDER = family_provider("opir.providers.cpu.rotary_kernels")

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_F32, _BF16, _F16 = _DTYPES

# Predicates: only what the kernels cannot do, reading few attributes (they are on
# the dispatch hot path; the checks are written out rather than shared).


# The vLLM-form predicates run on every attention layer's call and read only the
# query's dtype and device (`is` comparisons): the kernels take any layout, any
# strides, any cache dtype and check everything else themselves (C++).


def supports_rotary_embedding(
    positions, query, key, head_size, cos_sin_cache, is_neox_style, rotary_dim=None
) -> bool:
    dtype = query.dtype
    return (dtype is _F32 or dtype is _BF16 or dtype is _F16) and query.is_cpu


def supports_qk_norm_rope(
    positions,
    query,
    key,
    q_weight,
    k_weight,
    epsilon,
    head_size,
    cos_sin_cache,
    is_neox_style,
    rotary_dim=None,
    weight_bias=0.0,
) -> bool:
    dtype = query.dtype
    if not (dtype is _F32 or dtype is _BF16 or dtype is _F16) or not query.is_cpu:
        return False
    # rms_norm multiplies by an fp64 weight in fp64: native's
    return q_weight.dtype in _DTYPES and k_weight.dtype in _DTYPES


def supports_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1) -> bool:
    dtype = q.dtype
    if dtype not in _DTYPES or not q.is_cpu or type(unsqueeze_dim) is not int:
        return False
    if k.dtype is not dtype or cos.dtype is not dtype or sin.dtype is not dtype:
        return False
    if q.dim() != 4 or k.dim() != 4 or cos.dim() != 3 or sin.dim() != 3:
        return False
    if unsqueeze_dim not in (1, 2) or q.stride(-1) != 1 or k.stride(-1) != 1:
        return False
    return cos.stride(-1) == 1 and sin.stride(-1) == 1


def supports_qk_norm_rotary_pos_emb(
    q, k, q_weight, k_weight, epsilon, cos, sin, unsqueeze_dim=1, weight_bias=0.0
) -> bool:
    if q_weight.dtype not in _DTYPES or k_weight.dtype not in _DTYPES:
        return False
    return supports_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim)


# the in-place kernels check overlap themselves and run on private copies when needed
PROVIDER.register(rotary_embedding, supports_rotary_embedding, inplace=True, aliasing_safe=True)
PROVIDER.register(qk_norm_rope, supports_qk_norm_rope, inplace=True, aliasing_safe=True)
PROVIDER.register(rotary_pos_emb, supports_rotary_pos_emb)
PROVIDER.register(qk_norm_rotary_pos_emb, supports_qk_norm_rotary_pos_emb)
