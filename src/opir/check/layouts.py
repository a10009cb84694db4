"""Hostile memory layouts: the same values as a tensor, laid out the way real
callers hand them over (views of wider buffers, transposes, overlapping rows).

Every function returns a tensor equal to its input (the overlapping kinds
``expand`` and ``as_strided`` make new values, and say so) without touching it.
"""

from __future__ import annotations

import random

import torch

LAYOUTS = ("contiguous", "strided_rows", "transposed", "offset", "expand", "as_strided", "three_d")
"""Every layout :func:`relayout` makes; ``expand`` and ``as_strided`` overlap themselves."""

OVERLAPPING = frozenset({"expand", "as_strided"})


def strided_rows(x: torch.Tensor, pad: int = 13) -> torch.Tensor:
    """Same values as ``x``, rows taken from a wider buffer (last dim contiguous)."""
    wide = torch.zeros(*x.shape[:-1], x.shape[-1] + pad, dtype=x.dtype, device=x.device)
    wide[..., : x.shape[-1]] = x
    return wide[..., : x.shape[-1]]


def transposed(x: torch.Tensor) -> torch.Tensor:
    """Same values as ``x`` (2-D or more), last dim not contiguous."""
    return x.transpose(-1, -2).contiguous().transpose(-1, -2)


def offset(x: torch.Tensor, pad: int = 5) -> torch.Tensor:
    """Same values as ``x``, contiguous but starting ``pad`` elements into its storage."""
    flat = torch.zeros(x.numel() + pad, dtype=x.dtype, device=x.device)
    flat[pad:] = x.reshape(-1)
    return flat[pad:].view(x.shape)


def non_collapsible_3d(x2d: torch.Tensor) -> torch.Tensor:
    """A ``[2, T, H]`` view whose leading dims cannot be merged into one stride.

    Slice 0 holds ``x2d``, slice 1 its rows in reverse order.
    """
    t, h = x2d.shape
    buffer = torch.zeros(2, t + 3, h + 5, dtype=x2d.dtype, device=x2d.device)
    buffer[0, :t, :h] = x2d
    buffer[1, :t, :h] = x2d.flip(0)
    return buffer[:, :t, :h]


def relayout(values: torch.Tensor, kind: str, rng: random.Random) -> torch.Tensor:
    """``values`` in layout ``kind`` (one of :data:`LAYOUTS`).

    ``expand`` (every row is row 0's memory) and ``as_strided`` (rows overlap
    by half a row) change the values; ``three_d`` turns a 2-D tensor into a
    ``[2, T, H]`` view holding it twice. Tensors with fewer than two dims, and
    kinds that do not apply to a shape, come back as a contiguous clone.
    """
    if kind not in LAYOUTS:
        raise ValueError(f"unknown layout '{kind}'; valid: {', '.join(LAYOUTS)}")
    if kind == "contiguous" or values.dim() < 2:
        return values.clone()
    t, h = values.shape[-2], values.shape[-1]
    if kind == "strided_rows":
        return strided_rows(values, pad=rng.randint(1, 9))
    if kind == "transposed":
        return transposed(values)
    if kind == "offset":
        return offset(values, pad=rng.randint(1, 17))
    if kind == "expand":
        return values[..., :1, :].expand(values.shape)
    if kind == "as_strided":
        if values.dim() != 2 or t == 0:
            return values.clone()
        step = max(1, h // 2)
        base = values.reshape(-1)[: (t - 1) * step + h].clone()
        return base.as_strided(values.shape, (step, 1))
    if values.dim() != 2:  # three_d
        return values.clone()
    buffer = torch.zeros(2, t + 2, h + 3, dtype=values.dtype, device=values.device)
    buffer[0, :t, :h] = values
    buffer[1, :t, :h] = values
    return buffer[:, :t, :h]
