"""The ``triton`` provider's rotary predicates and impls (kernel: ``rotary.py``).

The impls belong to ``impls.PROVIDER`` (Triton loads, or fails to, once for every
op). ``rotary_embedding`` and ``qk_norm_rope`` are registered in place: a
``maybe_inplace`` call rotates query and key where they are (without the norm
only the rotated columns are written, so the rest of a fused qkv buffer is left
alone); a functional call runs the same kernel on opir's clones of them.

What the predicates accept (the rest falls through to the next provider):

* every op: tensors on the provider's device (CUDA/ROCm, or CPU under
  ``TRITON_INTERPRET=1``) in fp32, bf16 or fp16, the last dim contiguous (rows and
  heads may be strided: columns of a fused qkv buffer, Hugging Face's transposed
  ``[b, h, s, d]``); zero tokens or heads launch nothing;
* vLLM form: a cache in fp32, bf16 or fp16 (any strides), any integer positions;
  ``qk_norm_rope``: contiguous weights of one float dtype (fp32, bf16 or fp16);
* Hugging Face form: 4-D q and k of one batch and sequence length, 3-D cos and sin
  of q's dtype (torch's type promotion with another cos dtype is left to the
  native) with a contiguous last dim, ``unsqueeze_dim`` 1 (``[b, h, s, d]``) or 2
  (``[b, s, h, d]``), or -3/-2.

Inputs invalid for every provider pass the predicates and are rejected by the
launchers with the ops' own checks and messages. The positions' range is
checked on the host only for CPU tensors; on a GPU the kernel clamps the cache
row and writes NaN into the rotated columns of an out-of-range token
(docs/rotary.md).
"""

from __future__ import annotations

import torch

from opir.ops.rotary import qk_norm_rope, qk_norm_rotary_pos_emb, rotary_embedding, rotary_pos_emb
from opir.providers.triton.availability import ON_CPU
from opir.providers.triton.impls import PROVIDER

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_UNSQUEEZE = (1, 2, -3, -2)


def _ok(t: torch.Tensor) -> bool:
    if t.dtype not in KERNEL_DTYPES or not (t.is_cpu if ON_CPU else t.is_cuda):
        return False
    return t.dim() > 0 and t.stride(-1) == 1


def _ok_rows(t: torch.Tensor | None) -> bool:
    return t is None or (t.dim() > 0 and t.stride(-1) == 1)


def supports_rotary_embedding(
    positions, query, key, head_size, cos_sin_cache, is_neox_style, rotary_dim=None
) -> bool:
    return _ok(query) and _ok_rows(key) and cos_sin_cache.dtype in KERNEL_DTYPES


def _weights_ok(q_weight: torch.Tensor, k_weight: torch.Tensor) -> bool:
    return (
        q_weight.dtype in KERNEL_DTYPES
        and k_weight.dtype is q_weight.dtype
        and q_weight.is_contiguous()
        and k_weight.is_contiguous()
    )


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
    if not (_ok(query) and _ok_rows(key) and cos_sin_cache.dtype in KERNEL_DTYPES):
        return False
    return _weights_ok(q_weight, k_weight)


def _hf_ok(q, k, cos, sin, unsqueeze_dim) -> bool:
    if unsqueeze_dim not in _UNSQUEEZE or not _ok(q) or q.dim() != 4 or k.dim() != 4:
        return False
    dtype = q.dtype
    if k.dtype is not dtype or cos.dtype is not dtype or sin.dtype is not dtype:
        return False
    if cos.dim() != 3 or sin.dim() != 3:
        return False
    if k.stride(-1) != 1 or cos.stride(-1) != 1 or sin.stride(-1) != 1:
        return False
    seq = 2 if unsqueeze_dim in (1, -3) else 1
    return k.shape[0] == q.shape[0] and k.shape[seq] == q.shape[seq]


def supports_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1) -> bool:
    return _hf_ok(q, k, cos, sin, unsqueeze_dim)


def supports_qk_norm_rotary_pos_emb(
    q, k, q_weight, k_weight, epsilon, cos, sin, unsqueeze_dim=1, weight_bias=0.0
) -> bool:
    return _hf_ok(q, k, cos, sin, unsqueeze_dim) and _weights_ok(q_weight, k_weight)


PROVIDER.register(rotary_embedding, supports_rotary_embedding, inplace=True)
PROVIDER.register(qk_norm_rope, supports_qk_norm_rope, inplace=True)
PROVIDER.register(rotary_pos_emb, supports_rotary_pos_emb)
PROVIDER.register(qk_norm_rotary_pos_emb, supports_qk_norm_rotary_pos_emb)
