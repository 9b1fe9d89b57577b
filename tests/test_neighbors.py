"""Dense neighbourhood operations against brute-force references: farthest-point sampling and k-NN graphs."""

from __future__ import annotations

import pytest
import torch
from e3nn import o3

from geocanon.nn.neighbors import farthest_point_sampling, knn_graph


def _reference_fps(cloud: torch.Tensor, num_samples: int) -> list[int]:
    """Textbook FPS on one cloud [n, 3] (float64): start farthest from the centroid, then farthest from the picks."""
    cloud = cloud.double()
    first = int((cloud - cloud.mean(0)).norm(dim=-1).argmax())
    picks, dist = [first], (cloud - cloud[first]).norm(dim=-1)
    for _ in range(num_samples - 1):
        picks.append(int(dist.argmax()))
        dist = torch.minimum(dist, (cloud - cloud[picks[-1]]).norm(dim=-1))
    return picks


def test_fps_matches_the_textbook_algorithm_on_padded_clouds() -> None:
    g = torch.Generator().manual_seed(0)
    counts = [40, 17, 33]
    pos = torch.randn(3, 40, 3, generator=g, dtype=torch.float64)
    mask = torch.arange(40)[None] < torch.tensor(counts)[:, None]
    padded = pos.masked_fill(~mask[..., None], float("nan"))  # padding may hold anything
    index = farthest_point_sampling(padded, 12, mask)
    for b, n in enumerate(counts):
        assert index[b].tolist() == _reference_fps(pos[b, :n], 12)


def test_fps_picks_the_same_points_after_any_e3_transformation() -> None:
    g = torch.Generator().manual_seed(1)
    pos = torch.randn(4, 200, 3, generator=g, dtype=torch.float64)
    index = farthest_point_sampling(pos, 32)
    for det in (1.0, -1.0):
        rotation = det * o3.rand_matrix(dtype=torch.float64)
        moved = pos @ rotation.T + torch.randn(4, 1, 3, generator=g, dtype=torch.float64)
        assert torch.equal(farthest_point_sampling(moved, 32), index)
    assert torch.equal(farthest_point_sampling(pos.float(), 32), index)  # float32 agrees on a generic cloud


def test_fps_with_fewer_real_points_than_samples_never_picks_padding() -> None:
    pos = torch.randn(2, 10, 3, generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 4:] = False
    index = farthest_point_sampling(pos, 8, mask)
    assert sorted(set(index[1].tolist())) == [0, 1, 2, 3]  # all four real points, then repeats
    assert len(set(index[0].tolist())) == 8


@pytest.mark.parametrize("loop", [False, True])
def test_knn_graph_matches_brute_force_on_a_variable_size_batch(loop: bool) -> None:
    g = torch.Generator().manual_seed(3)
    sizes = [7, 3, 12]
    pos = torch.randn(sum(sizes), 3, generator=g, dtype=torch.float64)
    batch = torch.repeat_interleave(torch.arange(3), torch.tensor(sizes))
    edges = knn_graph(pos, 4, batch, loop=loop)
    expected = set()
    start = 0
    for n in sizes:
        d = torch.cdist(pos[start : start + n], pos[start : start + n])
        if not loop:
            d.fill_diagonal_(float("inf"))
        k = min(4, n - (0 if loop else 1))
        for i in range(n):
            expected |= {(start + int(j), start + i) for j in d[i].topk(k, largest=False).indices}
        start += n
    assert set(map(tuple, edges.T.tolist())) == expected
