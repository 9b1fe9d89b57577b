"""A base frame followed by a learned search over a dense grid of rotations: the pose that looks most "upright".

:class:`~geocanon.canonicalizers.choice.OctahedralChoice` can only fix a base frame up to the 24 rotations of
the cube, so it fails wherever the base frame itself is arbitrary: the principal axes of a regular
tetrahedron, octahedron or icosahedron are undetermined (their covariance is isotropic), and those of a
helix or an L-shape are tilted from the object's own axes. :class:`PoseSearch` instead scores every
rotation ``G_k`` of a fixed grid of K rotations (the 24 cube rotations, then Haar-random ones from a seed)
by how upright the base-canonical cloud looks when rotated by it — with a small PointNet of the rotated
cloud, or (much cheaper) an MLP of its rotated spherical-harmonic moments
(:class:`~geocanon.nn.spherical_scorer.SphericalScorer`) — and returns ``R = R0 · G_k*`` for the best score. Everything the scorer reads is invariant (the
base-canonical cloud, rotated by fixed matrices), so in eval mode the choice is invariant and ``R`` exactly
equivariant (ties between two scores are the only, measure-zero, exception; training mode scores a random
subset of the grid). Symmetric shapes need no special care:
rotations that map a shape onto itself give the same rotated cloud, hence the same score, and any of them
is as good for the backbone.

Why a grid and not gradient descent on the pose (Kaba et al. 2023 minimise an energy over SO(3)): a
backbone pretrained on upright clouds is accurate only within ~10° of upright (measured on the half-width
PointNet of ``benchmarks/adapt_synthetic.yaml``: 99.3% at 10°, 96.4% at 15°, 52.1% at 30°), so the search
must be global and fine: the nearest of the 4,608 grid rotations is 8° from a random pose at the median,
12° at the 90th percentile and 18° at most (2,000 random poses).

Training: the scorer is trained by the canonicalization prior's choice loss
(:meth:`~geocanon.CanonicalizationPrior.choice_loss`), a cross-entropy between the scores and
``softmax(−prior(R0 G_k)/τ)`` on upright training clouds. In training mode only ``train_candidates`` grid
rotations drawn at random per call are scored (the loss sees those, in ``last_candidates``); in eval mode
all K are scored, in chunks of bounded memory and without autograd (the frame takes no gradient from an
argmax, so even callers that differentiate, such as force models, need no graph of the scores).
"""

from __future__ import annotations

import torch
from e3nn import o3
from torch import Tensor, nn

from ..nn.neighbors import farthest_point_sampling
from ..nn.pointnet import CloudHead
from ..nn.spherical_scorer import SphericalScorer
from .base import Canonicalizer, CorrectedCanonicalizer
from .choice import cube_rotations

__all__ = ["PoseSearch", "rotation_grid"]

#: points (clouds x candidates x points) scored at once in eval mode: bounds the scorer's activations
_POINTS_PER_CHUNK = 1 << 20


def rotation_grid(size: int, seed: int = 0, dtype: torch.dtype | None = None) -> Tensor:
    """``size`` proper rotations [size, 3, 3]: the 24 cube rotations (identity first), then Haar-random ones.

    The random part comes from unit quaternions drawn with a generator seeded by ``seed``, so the grid is
    the same on every machine and need not be stored in checkpoints.
    """
    if size < 24:
        raise ValueError(f"a rotation grid holds the 24 cube rotations first: size must be >= 24, got {size}")
    generator = torch.Generator().manual_seed(seed)
    quaternions = torch.nn.functional.normalize(torch.randn(size - 24, 4, generator=generator, dtype=torch.float64), dim=-1)
    grid = torch.cat([cube_rotations(False, torch.float64), o3.quaternion_to_matrix(quaternions)])
    return grid.to(torch.get_default_dtype() if dtype is None else dtype)


class PoseSearch(CorrectedCanonicalizer):
    """``R = R0 · G_k``: a base frame times the grid rotation whose rotated base-canonical cloud scores highest.

    Args:
        base: the canonicalizer giving ``R0`` (its group is this one's; its translation is kept; ``det R = det R0``).
        num_candidates: K, size of the rotation grid (:func:`rotation_grid`).
        scorer: "pointnet" (a PointNet of each rotated ``num_points``-point farthest-point subsample: per-point
            MLP 3 → hidden → 2·hidden, max-pool, MLP → 1) or "spherical" (a
            :class:`~geocanon.nn.spherical_scorer.SphericalScorer` of all points: degree ≤ ``lmax`` moments on
            ``num_radial`` shells, MLP of width ``hidden``).
        hidden: width of the scorer.
        num_points: points the "pointnet" scorer reads (an invariant subsample, so the choice stays invariant).
        lmax, num_radial: of the "spherical" scorer.
        train_candidates: grid rotations scored per call in training mode (drawn at random; all K if
            larger than K).
        hard_candidates: in training mode, also score each cloud's ``hard_candidates`` best grid rotations
            under the current scorer (found without autograd over the whole grid), so the loss sees the
            rotations the search would pick at evaluation and can push down wrong ones (hard negatives);
            the frame of a training call is then the evaluation frame. 0: random rotations only.
        seed: seed of the grid.

    Shapes: as every :class:`~geocanon.canonicalizers.base.Canonicalizer` (dense [B, N, 3] with optional
    mask, or flat with ``batch``); returns a Frame with ``rotation`` [B, 3, 3].

    Attributes set by each call (for the prior's choice loss): ``last_base_rotation`` [B, 3, 3],
    ``last_logits`` [B, K'] (the scores) and ``last_candidates`` (the rotations scored: [K, 3, 3] in eval
    mode, [K', 3, 3] with K' = ``train_candidates`` in training mode, or [B, K', 3, 3] with
    K' = ``train_candidates + hard_candidates`` when each cloud adds its own); ``candidates`` [K, 3, 3] is a buffer.
    """

    def __init__(self, base: Canonicalizer, num_candidates: int = 4608, scorer: str = "pointnet", hidden: int = 64,
                 num_points: int = 64, lmax: int = 6, num_radial: int = 4, train_candidates: int = 128,
                 hard_candidates: int = 0, seed: int = 0) -> None:  # fmt: skip
        super().__init__(base)
        if num_points < 1 or train_candidates < 1 or hidden < 1:
            raise ValueError(f"num_points, train_candidates and hidden must be >= 1, got {num_points}, {train_candidates}, {hidden}")
        if hard_candidates < 0:
            raise ValueError(f"hard_candidates must be >= 0, got {hard_candidates}")
        if scorer not in ("pointnet", "spherical"):
            raise ValueError(f"scorer must be 'pointnet' or 'spherical', got {scorer!r}")
        self.num_points = num_points
        self.train_candidates = train_candidates
        self.hard_candidates = hard_candidates
        self.register_buffer("candidates", rotation_grid(num_candidates, seed), persistent=False)
        self.scorer: nn.Module = (
            CloudHead(1, hidden) if scorer == "pointnet" else SphericalScorer(self.candidates, lmax, num_radial, hidden)
        )
        self.last_logits: Tensor | None = None
        self.last_candidates: Tensor | None = None

    def scores(self, canonical: Tensor, mask: Tensor, index: Tensor) -> Tensor:
        """Scores [B, K'] of the base-canonical clouds [B, N, 3] (mask [B, N]) under the grid rotations ``index``
        ([K'] for all clouds, or [B, K'] per cloud); chunked over K' when autograd is off."""
        if isinstance(self.scorer, SphericalScorer):
            return self.scorer(canonical, mask, index)
        sample = farthest_point_sampling(canonical, self.num_points, mask)  # [B, S]
        points = torch.gather(canonical, 1, sample[..., None].expand(-1, -1, 3))  # [B, S, 3], all real
        b, s, _ = points.shape
        rotations = self.candidates.to(canonical.dtype)[index.expand(b, *index.shape[-1:])]  # [B, K', 3, 3]
        k = rotations.shape[1]
        chunk = max(1, _POINTS_PER_CHUNK // (b * s)) if not torch.is_grad_enabled() else k
        everything = torch.ones(1, 1, dtype=torch.bool, device=points.device).expand(b * min(chunk, k), s)
        out = []
        for start in range(0, k, chunk):
            part = rotations[:, start : start + chunk]
            # coordinates in the frame R0 G: (R0 G)^T x = G^T (R0^T x), i.e. row vectors times G
            rotated = torch.einsum("bsd,bkde->bkse", points, part).flatten(0, 1)  # [B * k, S, 3]
            out.append(self.scorer(rotated, everything[: rotated.shape[0]]).view(b, part.shape[1]))
        return torch.cat(out, 1)

    def correction(self, canonical: Tensor, mask: Tensor) -> Tensor:
        """The best-scoring grid rotation [B, 3, 3]; scores and the rotations scored are kept (class docstring)."""
        grid = self.candidates.to(canonical.dtype)
        everything = torch.arange(grid.shape[0], device=grid.device)
        if not self.training:
            with torch.no_grad():  # the frame takes no gradient from an argmax
                self.last_logits = self.scores(canonical, mask, everything)
            self.last_candidates = grid
            return grid[self.last_logits.argmax(-1)]
        index = everything
        if self.train_candidates < grid.shape[0]:
            index = torch.randperm(grid.shape[0], device=grid.device)[: self.train_candidates]
        if self.hard_candidates:
            with torch.no_grad():
                best = self.scores(canonical, mask, everything).topk(min(self.hard_candidates, grid.shape[0]), dim=1).indices
            index = torch.cat([index.expand(best.shape[0], -1), best], 1)  # [B, K']
        self.last_candidates = grid[index]
        self.last_logits = self.scores(canonical, mask, index)
        chosen = self.last_logits.argmax(-1)
        if index.ndim == 2:
            return self.last_candidates[torch.arange(index.shape[0], device=chosen.device), chosen]
        return self.last_candidates[chosen]
