"""FlashInfer calls behind torch custom ops (``torch.ops.opir_flashinfer.*``).

Imported on first use only (importing FlashInfer loads CUDA libraries). The
launchers take the ops' own parameters (``variance_size`` is always None:
the predicates refuse anything else). The custom ops have the ops' schemas
and fakes (``kit.define``) so that the compile lowering records one opaque
node per call; eager calls use the launchers directly.

FlashInfer API used (documented at docs.flashinfer.ai): ``flashinfer.norm.rmsnorm``,
``fused_add_rmsnorm``, ``gemma_rmsnorm``, ``gemma_fused_add_rmsnorm`` (2-D
``[tokens, hidden]``, fp16/bf16, weight of the input's dtype; the fused ones
write the normalised rows into ``input`` and the sum into ``residual``), and
``flashinfer.comm.create_allreduce_fusion_workspace`` / ``allreduce_fusion``
with ``AllReduceFusionPattern.kARResidualRMSNorm`` and ``weight_bias``;
``flashinfer.activation.silu_and_mul``, ``gelu_and_mul`` and
``gelu_tanh_and_mul`` (``fn(input, out=None, enable_pdl=None) -> Tensor``,
``input`` of shape ``(..., 2 * d)``, output ``(..., d)``; flashinfer-python 0.7.x);
``flashinfer.rope.apply_rope_with_cos_sin_cache(_inplace)(positions, query, key,
head_size, cos_sin_cache, is_neox)`` (fp32 cache ``[max_position, rotary_dim]`` =
``cat(cos, sin)``, query/key viewed as ``[tokens, heads, head_size]``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from flashinfer import activation as fi_activation
from flashinfer import norm as fi_norm
from flashinfer import rope as fi_rope

from opir.distributed.group import tp_rank, tp_world_size
from opir.ops import all_reduce_rms_norm as _ar_op
from opir.ops import fused_add_rms_norm as _fused_add_op
from opir.ops import gelu_and_mul as _gelu_and_mul_op
from opir.ops import rms_norm as _rms_norm_op
from opir.ops import rotary_embedding as _rotary_op
from opir.ops import silu_and_mul as _silu_and_mul_op
from opir.ops.rotary import check_rotary_args
from opir.providers.kit import define

NAMESPACE = "opir_flashinfer"

MiB = 2**20

# Largest all-reduce input (bytes) the fused kernel takes per world size;
# beyond it NCCL + a separate norm is faster. vLLM's measured Hopper table
# (FI_ALLREDUCE_FUSION_MAX_SIZE_MB, SM 9.0); larger calls take the unfused path.
MAX_FUSED_BYTES = {2: 64 * MiB, 4: 2 * MiB, 8: MiB // 2}


def rms_norm(
    x, weight, epsilon: float, variance_size: None, weight_bias: float, fp32_multiply: bool = False
) -> torch.Tensor:
    x2 = x.view(-1, x.shape[-1])
    if x2.shape[0] == 0:
        return torch.empty_like(x)
    fn = fi_norm.gemma_rmsnorm if weight_bias == 1.0 else fi_norm.rmsnorm
    return fn(x2, weight, epsilon).view(x.shape)


def fused_add_rms_norm(
    x,
    residual,
    weight,
    epsilon: float,
    variance_size: None,
    weight_bias: float,
    fp32_multiply: bool = False,
):
    """In place: the normalised rows into ``x``, the sum into ``residual``; returns both."""
    x2, r2 = x.view(-1, x.shape[-1]), residual.view(-1, x.shape[-1])
    if x2.shape[0] != 0:
        fn = fi_norm.gemma_fused_add_rmsnorm if weight_bias == 1.0 else fi_norm.fused_add_rmsnorm
        fn(x2, r2, weight, epsilon)
    return x, residual


_workspaces: dict[tuple, object] = {}


def _workspace(hidden: int, dtype: torch.dtype):
    """The IPC workspace for this (world, hidden, dtype), created collectively on
    first use: every rank reaches it in the same call, as for any collective."""
    from flashinfer import comm

    world = tp_world_size()
    key = (world, hidden, dtype)
    ws = _workspaces.get(key)
    if ws is None:
        element = torch.empty((), dtype=dtype).element_size()
        ws = comm.create_allreduce_fusion_workspace(
            backend="trtllm",
            world_size=world,
            rank=tp_rank(),
            max_token_num=MAX_FUSED_BYTES[world] // (hidden * element),
            hidden_dim=hidden,
            dtype=dtype,
            group=dist.group.WORLD,
        )
        _workspaces[key] = ws
    return ws


def all_reduce_rms_norm(
    x, residual, weight, epsilon: float, variance_size: None, weight_bias: float
):
    """Fused all-reduce + residual + RMSNorm; the unfused native path above the
    workspace budget (a host-side decision on the shape, same on every rank)."""
    from flashinfer import comm

    world = tp_world_size()
    if x.numel() == 0 or x.numel() * x.element_size() > MAX_FUSED_BYTES[world]:
        return _ar_op.native(x, residual, weight, epsilon, None, weight_bias)
    x2 = x.view(-1, x.shape[-1])
    norm_out, residual_out = torch.empty_like(x2), torch.empty_like(x2)
    comm.allreduce_fusion(
        input=x2,
        workspace=_workspace(x2.shape[1], x.dtype),
        pattern=comm.AllReduceFusionPattern.kARResidualRMSNorm,
        launch_with_pdl=False,
        residual_out=residual_out,
        norm_out=norm_out,
        residual_in=residual.view(-1, x.shape[-1]),
        rms_gamma=weight,
        rms_eps=epsilon,
        fp32_acc=True,
        weight_bias=weight_bias,
    )
    return norm_out.view(x.shape), residual_out.view(x.shape)


def silu_and_mul(x) -> torch.Tensor:
    if x.numel() == 0:  # no launch for zero tokens
        return x.new_empty((*x.shape[:-1], x.shape[-1] // 2))
    return fi_activation.silu_and_mul(x)


def gelu_and_mul(x, approximate: str) -> torch.Tensor:
    if x.numel() == 0:
        return x.new_empty((*x.shape[:-1], x.shape[-1] // 2))
    if approximate == "tanh":
        return fi_activation.gelu_tanh_and_mul(x)
    return fi_activation.gelu_and_mul(x)


def _safe_positions(positions, query, key, head_size, cos_sin_cache, rotary_dim):
    """The op's checks (the range aside: a device reduction would synchronise), then
    the positions clamped into the cache: FlashInfer reads whatever row it is given."""
    check_rotary_args(
        positions, query, key, head_size, cos_sin_cache, rotary_dim, check_range=False
    )
    return positions.clamp(0, cos_sin_cache.shape[0] - 1)


def rotary_embedding_(
    positions, query, key, head_size: int, cos_sin_cache, is_neox_style: bool, rotary_dim
) -> list[torch.Tensor]:
    """In place: query and key rotated where they are; returns [query, key]."""
    safe = _safe_positions(positions, query, key, head_size, cos_sin_cache, rotary_dim)
    if query.shape[0] != 0:
        fi_rope.apply_rope_with_cos_sin_cache_inplace(
            safe, query, key, head_size, cos_sin_cache, is_neox_style
        )
    return [query, key]


def rotary_embedding_functional(
    positions, query, key, head_size: int, cos_sin_cache, is_neox_style: bool, rotary_dim
) -> list[torch.Tensor]:
    """Into new tensors of the inputs' shapes."""
    safe = _safe_positions(positions, query, key, head_size, cos_sin_cache, rotary_dim)
    if query.shape[0] == 0:
        return [torch.empty_like(query), torch.empty_like(key)]
    q, k = fi_rope.apply_rope_with_cos_sin_cache(
        safe, query, key, head_size, cos_sin_cache, is_neox_style
    )
    return [q, k]


rotary_embedding = rotary_embedding_  # the impl is in place (see rotary_impls.py)


define(NAMESPACE, _rms_norm_op, rms_norm, device_types="cuda")
define(NAMESPACE, _silu_and_mul_op, silu_and_mul, device_types="cuda")
define(NAMESPACE, _gelu_and_mul_op, gelu_and_mul, device_types="cuda")
define(NAMESPACE, _fused_add_op, fused_add_rms_norm, inplace=True, device_types="cuda")
define(NAMESPACE, _ar_op, all_reduce_rms_norm, device_types="cuda")
define(NAMESPACE, _rotary_op, rotary_embedding_functional, device_types="cuda")
define(NAMESPACE, _rotary_op, rotary_embedding_, inplace=True, device_types="cuda")
