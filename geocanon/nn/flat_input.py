"""Flat (PyG-style) input for the bundled backbones, which compute on dense padded batches.

Every bundled backbone works on a dense batch ``pos`` [B, N, 3] with a padding ``mask`` [B, N]: its pair
and neighbour computations are dense torch ops (no pyg-lib or torch-cluster needed). :func:`accepts_flat_batches`
lets such a ``forward`` also take the layout of PyTorch Geometric — ``pos`` [M, 3] with ``batch=`` [M] and
per-point features [M, ...] — by padding them with ``torch_geometric.utils.to_dense_batch`` (through
:func:`geocanon.layout.to_dense`), so that a wrapper such as :class:`~geocanon.Canonicalized` called on a
``Batch`` can hand its canonical points straight to the backbone. Per-cloud outputs ([B, ...]) are returned as
they are, per-point outputs ([B, N, ...]) as the flat rows [M, ...] of the real points, in input order.
(:class:`~geocanon.nn.schnet.SchNetEnergy` wraps PyG's SchNet, which computes on flat input: it takes a flat batch
as it is, validated by the same :func:`check_flat_call`.)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from torch import Tensor

from ..layout import to_dense
from ..validation import check_flat_batch, check_one_layout

__all__ = ["accepts_flat_batches", "check_flat_call"]

Forward = TypeVar("Forward", bound=Callable[..., Any])


def check_flat_call(pos: Tensor, batch: Tensor, mask: Tensor | None, *args: Any, **features: Any) -> None:
    """Validate a flat call ``forward(pos [M, 3], *args, batch=[M], **features)``: no ``mask`` beside ``batch``, a valid
    batch vector, and M rows in every tensor feature (``args`` are named by position, counting ``pos`` as 1)."""
    check_one_layout(batch, mask)
    check_flat_batch(pos, batch)
    for name, value in [*((f"positional argument {i + 2}", a) for i, a in enumerate(args)), *features.items()]:
        if isinstance(value, Tensor) and (value.ndim == 0 or value.shape[0] != len(pos)):
            raise ValueError(f"with batch= the per-point input {name} must have {len(pos)} rows like pos, got {list(value.shape)}")


def accepts_flat_batches(per_point: bool | tuple[bool, ...]) -> Callable[[Forward], Forward]:
    """Decorate a dense ``forward(self, pos [B, N, 3], *features, mask=None, **features)`` to accept flat input too.

    Args:
        per_point: whether the output is per point ([B, N, ...] -> flat [M, ...]) rather than per cloud; for a forward
            that returns a tuple of tensors, one such flag per element.

    The decorated forward takes an extra keyword ``batch`` [M] (sorted cloud index of each point, as in PyG). With
    it, ``pos`` must be [M, 3] and every tensor feature must have M rows; passing ``mask`` as well is an error.
    Without it the call is the dense one, unchanged.
    """

    def decorate(forward: Forward) -> Forward:
        @functools.wraps(forward)
        def call(self: Any, pos: Tensor, *args: Any, batch: Tensor | None = None, **kwargs: Any) -> Any:
            if batch is None:
                return forward(self, pos, *args, **kwargs)
            check_flat_call(pos, batch, kwargs.pop("mask", None), *args, **kwargs)
            dense_pos, mask = to_dense(pos, batch)
            args = tuple(to_dense(a, batch)[0] if isinstance(a, Tensor) else a for a in args)
            kwargs = {k: to_dense(v, batch)[0] if isinstance(v, Tensor) else v for k, v in kwargs.items()}
            out = forward(self, dense_pos, *args, mask=mask, **kwargs)
            if isinstance(per_point, tuple):
                return tuple(o[mask] if flag else o for o, flag in zip(out, per_point, strict=True))
            return out[mask] if per_point else out

        return call  # type: ignore[return-value]

    return decorate
