"""Tests for the plain backbones (PointNet, DGCNN, NBodyGNN) and the EGNN baseline."""

from __future__ import annotations

import pytest
import torch
from e3nn import o3
from torch import Tensor, nn

from geocanon.nn.dgcnn import DGCNN
from geocanon.nn.egnn import EGNN
from geocanon.nn.gnn import COULOMB_SOFTENING, INITS, NBodyGNN
from geocanon.nn.pointnet import PointNet, transform_regularizer


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _classifiers() -> dict[str, nn.Module]:
    return {
        "pointnet": PointNet(5, width_scale=0.125),
        "pointnet_tnet": PointNet(5, input_transform=True, width_scale=0.125),
        "dgcnn": DGCNN(5, k=4, emb_dims=32, width_scale=0.125),
    }


def _live_pair_head(model: NBodyGNN) -> NBodyGNN:
    """The pair-vector head starts at zero; give it weights so that the tests exercise it."""
    nn.init.normal_(model.pair_head.weight, std=0.1)
    nn.init.normal_(model.pair_head.bias, std=0.1)
    return model


def _nbody_models() -> dict[str, nn.Module]:
    return {
        "gnn": NBodyGNN(hidden=16, layers=2),
        "gnn_layernorm": NBodyGNN(hidden=16, layers=2, layer_norm=True, position_residual=False),
        "gnn_coulomb": NBodyGNN(hidden=16, layers=2, relative_positions=True, coulomb_edges=True),
        "gnn_substeps": NBodyGNN(hidden=16, layers=2, relative_positions=True, coulomb_edges=True, substeps=3),
        "gnn_approach": NBodyGNN(hidden=16, layers=2, relative_positions=True, coulomb_edges=True, approach_edges=True),
        "gnn_pair_vector": _live_pair_head(NBodyGNN(16, 2, relative_positions=True, approach_edges=True, pair_vector_output=True)),
        "egnn": EGNN(hidden=16, layers=2),
    }


def _nbody_inputs(b: int, n: int, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, Tensor]:
    pos = torch.randn(b, n, 3, dtype=dtype)
    vel = torch.randn(b, n, 3, dtype=dtype)
    charge = torch.randint(0, 2, (b, n, 1)).to(dtype) * 2 - 1
    return pos, vel, charge


def _pad(tensors: list[Tensor], n: int, fill: float) -> tuple[Tensor, Tensor]:
    """Stack [n_i, F] tensors into [B, n, F] filled with ``fill`` and a [B, n] mask."""
    out = torch.full((len(tensors), n, tensors[0].shape[-1]), fill, dtype=tensors[0].dtype)
    mask = torch.zeros(len(tensors), n, dtype=torch.bool)
    for i, t in enumerate(tensors):
        out[i, : len(t)] = t
        mask[i, : len(t)] = True
    return out, mask


def _orthogonal(sign: float, dtype: torch.dtype) -> Tensor:
    return o3.rand_matrix(dtype=dtype) * sign


# ---------------------------------------------------------------- classifiers


@pytest.mark.parametrize("name", ["pointnet", "pointnet_tnet", "dgcnn"])
def test_classifier_shape_and_permutation_invariance(name: str) -> None:
    model = _classifiers()[name].eval()
    pos = torch.randn(3, 24, 3)
    perm = torch.randperm(24)
    with torch.no_grad():
        logits = model(pos)
        logits_perm = model(pos[:, perm])
    assert logits.shape == (3, 5)
    torch.testing.assert_close(logits_perm, logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["pointnet", "pointnet_tnet", "dgcnn"])
def test_classifier_padding_ignored_eval(name: str) -> None:
    """A padded batch (NaN padding) gives each cloud's unpadded logits; includes a cloud with < k points."""
    model = _classifiers()[name].eval()
    clouds = [torch.randn(n, 3) for n in (12, 3, 20)]
    pos, mask = _pad(clouds, 25, float("nan"))
    with torch.no_grad():
        padded = model(pos, mask=mask)
        alone = torch.cat([model(c[None]) for c in clouds])
    assert torch.isfinite(padded).all()
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["pointnet", "pointnet_tnet", "dgcnn"])
def test_classifier_padding_ignored_train(name: str) -> None:
    """In training mode, BatchNorm statistics do not see padding: more/different padding, same output."""
    model = _classifiers()[name].train()
    clouds = [torch.randn(n, 3) for n in (12, 7, 20)]
    pos_a, mask_a = _pad(clouds, 20, 0.0)
    pos_b, mask_b = _pad(clouds, 31, 1e3)
    torch.manual_seed(1)
    out_a = model(pos_a, mask=mask_a)
    torch.manual_seed(1)
    out_b = model(pos_b, mask=mask_b)
    torch.testing.assert_close(out_a, out_b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["pointnet", "pointnet_tnet", "dgcnn"])
def test_classifier_finite_gradients(name: str) -> None:
    model = _classifiers()[name].train()
    pos, mask = _pad([torch.randn(n, 3) for n in (10, 16)], 16, 0.0)
    pos.requires_grad_(True)
    model(pos, mask=mask).square().sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(grads) == len(list(model.parameters()))
    assert all(torch.isfinite(g).all() for g in grads)
    assert torch.isfinite(pos.grad).all() and pos.grad[mask].abs().sum() > 0


def test_pointnet_not_rotation_invariant() -> None:
    """Contrast: a plain PointNet changes its logits under rotation (the tests can see non-invariance)."""
    # Training mode (batch statistics, no dropout): an untrained net in eval mode is nearly constant.
    model = PointNet(5, dropout=0.0, width_scale=0.125).train()
    pos = torch.randn(4, 32, 3) * torch.tensor([3.0, 1.0, 0.3])
    with torch.no_grad():
        logits = model(pos)
        rotated = model(pos @ _orthogonal(1.0, torch.float32).T)
    assert (rotated - logits).norm() / logits.norm() > 0.1


def test_pointnet_tnet_starts_at_identity() -> None:
    model = PointNet(5, input_transform=True, width_scale=0.125)
    pos = torch.randn(3, 16, 3)
    for mode in (model.train, model.eval):
        mode()
        model(pos)
        assert model.last_transform is not None
        assert torch.equal(model.last_transform, torch.eye(3).expand(3, 3, 3))
    assert transform_regularizer(model.last_transform) == 0
    assert transform_regularizer(2 * model.last_transform) > 1


def test_pointnet_without_tnet_equals_tnet_at_init() -> None:
    """At initialisation the identity T-Net leaves the rest of the network's input untouched."""
    torch.manual_seed(3)
    with_tnet = PointNet(4, input_transform=True, width_scale=0.125).eval()
    plain = PointNet(4, width_scale=0.125).eval()
    plain.load_state_dict({k: v for k, v in with_tnet.state_dict().items() if not k.startswith("tnet.")})
    pos = torch.randn(2, 16, 3)
    with torch.no_grad():
        torch.testing.assert_close(with_tnet(pos), plain(pos))


@pytest.mark.parametrize("name", ["pointnet", "dgcnn"])
def test_classifier_rejects_bad_input(name: str) -> None:
    model = _classifiers()[name].eval()
    with pytest.raises(ValueError, match=r"\[B, N, 3\]"):
        model(torch.randn(2, 10, 2))
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1] = False
    with pytest.raises(ValueError, match=r"empty cloud\(s\) \[1\]"):
        model(torch.randn(2, 10, 3), mask=mask)
    pos = torch.randn(2, 10, 3)
    pos[0, 4, 1] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or Inf in cloud\(s\) \[0\]"):
        model(pos)
    with pytest.raises(ValueError, match="mask must be a bool"):
        model(torch.randn(2, 10, 3), mask=torch.ones(2, 10))


# ---------------------------------------------------------------- N-body models


NBODY_GNNS = ["gnn", "gnn_layernorm", "gnn_coulomb", "gnn_substeps", "gnn_approach", "gnn_pair_vector"]


@pytest.mark.parametrize("name", [*NBODY_GNNS, "egnn"])
@pytest.mark.parametrize("n", [3, 5, 9])
def test_nbody_shape_and_permutation_equivariance(name: str, n: int) -> None:
    model = _nbody_models()[name].eval()
    pos, vel, charge = _nbody_inputs(2, n)
    perm = torch.randperm(n)
    with torch.no_grad():
        out = model(pos, vel, charge)
        out_perm = model(pos[:, perm], vel[:, perm], charge[:, perm])
    assert out.shape == (2, n, 3)
    torch.testing.assert_close(out_perm, out[:, perm], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", [*NBODY_GNNS, "egnn"])
def test_nbody_padding_ignored(name: str) -> None:
    model = _nbody_models()[name].eval()
    systems = [_nbody_inputs(1, n) for n in (3, 5, 9)]
    pos, mask = _pad([s[0][0] for s in systems], 11, float("nan"))
    vel, _ = _pad([s[1][0] for s in systems], 11, float("nan"))
    charge, _ = _pad([s[2][0] for s in systems], 11, float("nan"))
    with torch.no_grad():
        padded = model(pos, vel, charge, mask=mask)
        for i, (p, v, q) in enumerate(systems):
            torch.testing.assert_close(padded[i, : p.shape[1]], model(p, v, q)[0], atol=1e-5, rtol=1e-5)
    assert torch.isnan(padded[~mask]).all()  # padding rows are returned as given


@pytest.mark.parametrize("name", [*NBODY_GNNS, "egnn"])
def test_nbody_finite_gradients(name: str) -> None:
    model = _nbody_models()[name]
    pos, vel, charge = _nbody_inputs(3, 6)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[1, 4:] = False
    vel[0, 2] = 0.0  # |v| at zero velocity
    pos.requires_grad_(True)
    model(pos, vel, charge, mask=mask).square().sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert torch.isfinite(pos.grad).all()


def _egnn_error(model: nn.Module, dtype: torch.dtype, sign: float, mask: Tensor | None) -> float:
    """Relative E(3)-equivariance error ``|f(g.x) - g.f(x)| / |f(x)|`` on real particles."""
    pos, vel, charge = _nbody_inputs(4, 7, dtype)
    q = _orthogonal(sign, dtype)
    shift = torch.randn(4, 1, 3, dtype=dtype)
    with torch.no_grad():
        out = model(pos, vel, charge, mask=mask)
        out_g = model(pos @ q.T + shift, vel @ q.T, charge, mask=mask)
    keep = torch.ones(4, 7, dtype=torch.bool) if mask is None else mask
    expected = out @ q.T + shift
    return float((out_g - expected)[keep].norm() / out[keep].norm())


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_egnn_exactly_e3_equivariant(sign: float) -> None:
    mask = torch.ones(4, 7, dtype=torch.bool)
    mask[2, 3:] = False
    default = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        model64 = EGNN(hidden=16, layers=3).eval()
    finally:
        torch.set_default_dtype(default)
    assert _egnn_error(model64, torch.float64, sign, None) < 1e-10
    assert _egnn_error(model64, torch.float64, sign, mask) < 1e-10
    model32 = EGNN(hidden=16, layers=3).eval()
    assert _egnn_error(model32, torch.float32, sign, None) < 1e-5
    assert _egnn_error(model32, torch.float32, sign, mask) < 1e-5


def test_plain_gnn_not_equivariant() -> None:
    """Contrast: the same check rejects the plain GNN, so the EGNN test can fail."""
    default = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        model = NBodyGNN(hidden=16, layers=2).eval()
    finally:
        torch.set_default_dtype(default)
    assert _egnn_error(model, torch.float64, 1.0, None) > 1e-3


def test_gnn_coulomb_edges_finite_for_coincident_particles() -> None:
    """The softened Coulomb features stay finite (and bounded) when two particles coincide."""
    torch.manual_seed(0)
    model = NBodyGNN(hidden=8, layers=1, relative_positions=True, coulomb_edges=True).eval()
    assert model.edge_inputs == 2 + 3 + 1 + 3
    pos, vel, charge = _nbody_inputs(2, 5)
    pos[0, 1] = pos[0, 0]  # particles 0 and 1 of system 0 on top of each other
    pos[1, 1] = pos[1, 0] + torch.tensor([COULOMB_SOFTENING / 2**0.5, 0.0, 0.0])  # where the pair force peaks
    seen = []
    hook = model.edge_mlps[0].register_forward_hook(lambda mod, args, out: seen.append(args[0][..., -9:]))
    with torch.no_grad():
        out = model(pos, vel, charge)
    hook.remove()
    assert torch.isfinite(out).all()
    edge = seen[0]  # [B, N, N, 9]: qq, r², d (3), qq/(r²+s²), pair force (3)
    assert edge[0, 0, 1, 5].abs().item() == pytest.approx(1.0 / COULOMB_SOFTENING**2)  # r = 0: q q / s²
    assert edge[0, 0, 1, 6:].abs().max().item() == 0.0  # coincident: no direction, no force
    peak = 2.0 / (3.0 * 3.0**0.5 * COULOMB_SOFTENING**2)  # max of r / (r² + s²)^{3/2}
    assert edge[1, 1, 0, 6].abs().item() == pytest.approx(peak, rel=1e-4)
    assert edge[..., 6:].abs().max().item() <= peak * (1 + 1e-4)


@pytest.mark.parametrize("substeps, t_closest, closest2", [(1, 0.5, 0.0), (4, 0.25, 1.0)])
def test_gnn_approach_edges_closest_approach(substeps: int, t_closest: float, closest2: float) -> None:
    """Two particles 2 apart closing at relative speed 4 meet at t* = 0.5 of the horizon; a step window of
    1/4 ends before, at distance 1. A third particle at rest relative to particle 2 gets t* = 0 and its
    current distance. Also: every feature enters the first edge MLP (its input width follows edge_inputs)."""
    model = NBodyGNN(hidden=8, layers=1, relative_positions=True, coulomb_edges=True, approach_edges=True, substeps=substeps)
    assert model.edge_inputs == 2 + 3 + 1 + 3 + 4 + 3 + 1
    assert model.edge_mlps[0][0].in_features == 2 * 8 + model.edge_inputs
    pos = torch.tensor([[[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [-1.0, 3.0, 0.0]]], dtype=torch.float64)
    vel = torch.tensor([[[-2.0, 0.0, 0.0], [2.0, 0.0, 0.0], [2.0, 0.0, 0.0]]], dtype=torch.float64)
    charge = torch.tensor([[[1.0], [-1.0], [1.0]]], dtype=torch.float64)
    diff = pos[:, :, None] - pos[:, None, :]
    qq = (charge * charge.transpose(1, 2))[..., None]
    radial, dvel2, t, d2, dvel, coulomb = model._approach_features(diff, vel[:, :, None] - vel[:, None, :], qq)
    assert radial[0, 0, 1, 0].item() == -8.0 and dvel2[0, 0, 1, 0].item() == 16.0
    assert t[0, 0, 1, 0].item() == pytest.approx(t_closest) and d2[0, 0, 1, 0].item() == pytest.approx(closest2)
    assert t[0, 1, 0, 0].item() == pytest.approx(t_closest)  # symmetric in the pair
    assert t[0, 1, 2, 0].item() == 0.0 and d2[0, 1, 2, 0].item() == pytest.approx(9.0)
    assert dvel[0, 0, 1].tolist() == [-4.0, 0.0, 0.0]
    assert coulomb[0, 0, 1, 0].item() == pytest.approx(-1.0 / (closest2 + COULOMB_SOFTENING**2))


def test_gnn_pair_vector_output_lies_in_the_pair_plane() -> None:
    """The head starts at zero (the model is the one without it); with the node decoder silenced, a two-particle
    system moves only in the plane of its separation and relative velocity (and the head does move it); with the
    head zeroed again it does not move at all."""
    torch.manual_seed(0)
    model = NBodyGNN(hidden=16, layers=2, relative_positions=True, pair_vector_output=True).double().eval()
    pos, vel, charge = _nbody_inputs(4, 2, torch.float64)
    reference = NBodyGNN(hidden=16, layers=2, relative_positions=True).double().eval()
    reference.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():
        assert torch.equal(model(pos, vel, charge), reference(pos, vel, charge))  # the head starts at zero
        torch.nn.init.normal_(model.pair_head.weight)
        model.decoder[-1].weight.zero_()
        model.decoder[-1].bias.zero_()
        move = model(pos, vel, charge) - pos  # [4, 2, 3]
        normal = torch.cross(pos[:, 0] - pos[:, 1], vel[:, 0] - vel[:, 1], dim=-1)[:, None]  # [4, 1, 3]
        assert (move * normal).sum(-1).abs().max() < 1e-12 * normal.norm(dim=-1).max()
        assert move.norm(dim=-1).min() > 1e-4
        model.pair_head.weight.zero_()
        model.pair_head.bias.zero_()
        assert (model(pos, vel, charge) - pos).abs().max() == 0.0


@pytest.mark.parametrize("node_charges", [False, True])
def test_gnn_charge_flip_invariance_without_node_charges(node_charges: bool) -> None:
    """Flipping every charge leaves the dynamics unchanged; the GNN without node charges is exactly invariant."""
    torch.manual_seed(0)
    model = NBodyGNN(hidden=16, layers=2, relative_positions=True, coulomb_edges=True, node_charges=node_charges).eval()
    pos, vel, charge = _nbody_inputs(3, 5)
    with torch.no_grad():
        change = (model(pos, vel, -charge) - model(pos, vel, charge)).abs().max().item()
    assert (change > 1e-4) if node_charges else (change == 0.0)


def test_gnn_substeps_integrate_one_step_model() -> None:
    """K = 2 substeps are two applications of the one-step network: each gives the mean velocity v' of its half
    of the horizon (one-step displacement), the particles move by v'/2, and the next step starts there with v'."""
    torch.manual_seed(0)
    two = NBodyGNN(16, 2, velocity_residual=True, relative_positions=True, coulomb_edges=True, substeps=2).double().eval()
    one = NBodyGNN(16, 2, velocity_residual=True, relative_positions=True, coulomb_edges=True).double().eval()
    with torch.no_grad():
        two.velocity_step.fill_(0.8)
        one.load_state_dict(two.state_dict())
        pos, vel, charge = _nbody_inputs(3, 5, torch.float64)
        v1 = one(pos, vel, charge) - pos
        half = pos + v1 / 2
        expected = half + (one(half, v1, charge) - half) / 2
        assert torch.allclose(two(pos, vel, charge), expected, atol=1e-12)
        assert (pos + v1 - expected).abs().max() > 1e-3  # the second step matters


def test_gnn_substeps_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="substeps must be >= 1"):
        NBodyGNN(substeps=0)
    with pytest.raises(ValueError, match="needs position_residual=True"):
        NBodyGNN(substeps=2, position_residual=False)


def test_nbody_rejects_bad_input() -> None:
    model = NBodyGNN(hidden=8, layers=1)
    pos, vel, charge = _nbody_inputs(2, 4)
    with pytest.raises(ValueError, match="vel must have the shape of pos"):
        model(pos, vel[:, :3], charge)
    with pytest.raises(ValueError, match="charge must have shape"):
        model(pos, vel, charge[..., 0])
    vel[1, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"vel: systems \[1\] contain NaN or Inf"):
        model(pos, vel, charge)
    with pytest.raises(ValueError, match="activation must be one of"):
        EGNN(hidden=8, layers=1, activation="swish")


@pytest.mark.parametrize("init", INITS)
def test_gnn_initialisations(init):
    from geocanon.nn.energy import EnergyGNN

    model = EnergyGNN(3, hidden=8, layers=1, init=init)
    biases = [m.bias.detach() for m in model.modules() if isinstance(m, torch.nn.Linear) and m.bias is not None]
    assert biases and all((b == 0).all() for b in biases) == (init == "xavier")
    with pytest.raises(ValueError, match="init must be one of"):
        EnergyGNN(3, init="he")


# ---------------------------------------------------------------- flat (PyG-style) input


def _every_backbone() -> dict[str, tuple[nn.Module, tuple[str, ...], bool]]:
    """name -> (model in eval mode, its per-point feature inputs, whether the output is per point)."""
    from geocanon.nn.energy import EnergyGNN, EnergyMLP
    from geocanon.nn.linear import ConstantVelocity
    from geocanon.nn.schnet import SchNetEnergy

    nbody = {name: (model, ("vel", "charge"), True) for name, model in _nbody_models().items()}
    return {
        **{name: (model, (), False) for name, model in _classifiers().items()},
        **nbody,
        "constant_velocity": (ConstantVelocity(0.7), ("vel", "charge"), True),
        "energy_gnn": (EnergyGNN(3, hidden=8, layers=2), ("species",), False),
        "energy_mlp": (EnergyMLP(6, 3, hidden=8), ("species",), False),
        "schnet": (SchNetEnergy(hidden=8, filters=8, interactions=1), ("species",), False),
    }


def _flat_features(sizes: list[int], names: tuple[str, ...]) -> dict[str, Tensor]:
    m = sum(sizes)
    make = {"vel": lambda: torch.randn(m, 3), "charge": lambda: torch.randint(0, 2, (m, 1)).float() * 2 - 1,
            "species": lambda: nn.functional.one_hot(torch.randint(0, 3, (m,)), 3).float()}
    return {name: make[name]() for name in names}


@pytest.mark.parametrize("name", list(_every_backbone()))
def test_every_backbone_takes_flat_pyg_batches_like_padded_ones(name: str) -> None:
    """pos [M, 3] with batch=[M] (and features [M, F]) gives what the padded dense batch gives: the same per-cloud
    output, or the per-point output of the real points as flat rows in input order."""
    from geocanon.layout import to_dense

    model, feature_names, per_point = _every_backbone()[name]
    model.eval()
    sizes = [6, 6, 6] if name == "energy_mlp" else [5, 9, 7]  # EnergyMLP: molecules of one fixed size
    batch = torch.arange(len(sizes)).repeat_interleave(torch.tensor(sizes))
    pos, features = torch.randn(len(batch), 3), _flat_features(sizes, feature_names)
    with torch.no_grad():
        flat = model(pos, **features, batch=batch)
        dense_pos, mask = to_dense(pos, batch)
        padded = model(dense_pos, **{k: to_dense(v, batch)[0] for k, v in features.items()}, mask=mask)
    assert flat.shape == ((len(batch), 3) if per_point else padded.shape)
    torch.testing.assert_close(flat, padded[mask] if per_point else padded, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # features passed by position are laid out the same way
        torch.testing.assert_close(model(pos, *features.values(), batch=batch), flat)
    with pytest.raises(ValueError, match="either batch= .* or mask="):
        model(pos, **features, batch=batch, mask=torch.ones(len(batch), dtype=torch.bool))
    with pytest.raises(ValueError, match=r"batch must be sorted"):
        model(pos, **features, batch=batch.flip(0))
    with pytest.raises(ValueError, match=r"with a batch vector must have shape \[M, 3\]"):
        model(dense_pos, **features, batch=batch)
    with pytest.raises(ValueError, match="batch must be an integer tensor"):
        model(pos, **features, batch=batch.float())
    with pytest.raises(ValueError, match=r"empty cloud\(s\) \[1\]"):  # no point carries cloud index 1
        model(pos, **features, batch=torch.where(batch > 0, batch + 1, batch))
    with pytest.raises(ValueError, match="negative cloud indices"):
        model(pos, **features, batch=batch - 1)
    if feature_names:
        short = {k: v[:-1] if k == feature_names[0] else v for k, v in features.items()}
        with pytest.raises(ValueError, match=f"per-point input {feature_names[0]} must have {len(batch)} rows"):
            model(pos, **short, batch=batch)
