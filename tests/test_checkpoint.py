"""One-file checkpoints: canonicalizers alone or with a backbone round-trip exactly; bad files fail clearly."""

from __future__ import annotations

import copy

import pytest
import torch

from geocanon import Canonicalized, E3nnCanonicalizer, checkpoint
from geocanon.testing import equivariance_error

from .conftest import default_dtype

# one layer: builds in half the time of the default two (e3nn code generation dominates)
CANON_SPEC = {"name": "e3nn", "config": {"group": "SE3", "hidden_mul": 4, "k": 6, "num_points": 32, "layers": 1}}
WRAPPED_SPEC = {
    "name": "canonicalized",
    "config": {
        "backbone": {"name": "pointnet", "config": {"num_classes": 3, "width_scale": 0.05}},
        "canonicalizer": {"name": "e3nn", "config": {"group": "E3", "hidden_mul": 4, "k": 6, "num_points": 16, "layers": 1}},
        "output": "invariant",
    },
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A built canonicalizer saved once: (its file, a fixed batch pos [3, 40, 3], its frame of that batch)."""
    canon = checkpoint.build(CANON_SPEC).eval()
    pos = torch.randn(3, 40, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        frame = canon(pos)
    path = checkpoint.save(tmp_path_factory.mktemp("ckpt") / "sub" / "canon.pt", canon, meta={"note": "random weights"})
    return path, pos, frame


def test_canonicalizer_round_trip_gives_identical_frames(saved):
    path, pos, before = saved
    loaded, meta = checkpoint.load(path)
    with torch.no_grad():
        after = loaded(pos)
    assert isinstance(loaded, E3nnCanonicalizer) and not loaded.training
    assert checkpoint.spec_of(loaded) == CANON_SPEC
    assert meta == {"note": "random weights"}
    assert torch.equal(before.rotation, after.rotation)
    assert torch.equal(before.translation, after.translation)


def test_canonicalized_model_round_trip(tmp_path):
    model = checkpoint.build(copy.deepcopy(WRAPPED_SPEC)).eval()
    pos = torch.randn(2, 30, 3)
    with torch.no_grad():
        logits = model(pos)
        frame = model.last_frame
    loaded, _ = checkpoint.load(checkpoint.save(tmp_path / "model.pt", model))
    with torch.no_grad():
        logits_after = loaded(pos)
    assert isinstance(loaded, Canonicalized)
    assert checkpoint.spec_of(loaded) == WRAPPED_SPEC
    assert torch.equal(logits, logits_after)
    assert torch.equal(frame.rotation, loaded.last_frame.rotation)
    assert torch.equal(frame.translation, loaded.last_frame.translation)
    assert loaded.canonicalizer.group == "E3"


def test_float32_checkpoint_loads_as_exact_float64_canonicalizer(saved):
    """geocanon canonicalize relies on this: rebuilt under float64, the frame is equivariant to ~1e-12."""
    path = saved[0]
    with default_dtype(torch.float64):
        loaded, _ = checkpoint.load(path)
    assert next(loaded.parameters()).dtype == torch.float64

    def canonical_points(pos):
        return loaded(pos).to_canonical_points(pos)

    err = equivariance_error(canonical_points, torch.randn(2, 40, 3, dtype=torch.float64), group="SE3", trials=2)
    assert err < 1e-12, err


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt does not exist"):
        checkpoint.load(tmp_path / "nope.pt")


def test_corrupt_and_truncated_checkpoints(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint at all" * 10)
    with pytest.raises(ValueError, match="garbage.pt cannot be read"):
        checkpoint.load(garbage)
    good = checkpoint.save(tmp_path / "good.pt", checkpoint.build({"name": "pca", "config": {"group": "E3"}}))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated.pt cannot be read"):
        checkpoint.load(truncated)


def test_files_that_are_not_geocanon_checkpoints(tmp_path):
    other = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {}, "epoch": 3}, other)
    with pytest.raises(ValueError, match="not a geocanon checkpoint"):
        checkpoint.load(other)
    newer = tmp_path / "newer.pt"
    torch.save({"format": checkpoint.FORMAT, "version": checkpoint.VERSION + 1, "spec": CANON_SPEC, "state_dict": {}}, newer)
    with pytest.raises(ValueError, match="version"):
        checkpoint.load(newer)
    incomplete = tmp_path / "incomplete.pt"
    torch.save({"format": checkpoint.FORMAT, "version": checkpoint.VERSION, "spec": CANON_SPEC}, incomplete)
    with pytest.raises(ValueError, match="incomplete: no state_dict"):
        checkpoint.load(incomplete)


def test_spec_and_weights_that_disagree(tmp_path, saved):
    payload = torch.load(saved[0], weights_only=False)
    path = tmp_path / "edited.pt"
    payload["spec"] = {"name": "e3nn", "config": {**CANON_SPEC["config"], "hidden_mul": 8}}
    torch.save(payload, path)
    with pytest.raises(ValueError, match="weights do not match its spec"):
        checkpoint.load(path)
    payload["spec"] = {"name": "no_such_model", "config": {}}
    torch.save(payload, path)
    with pytest.raises(ValueError, match="cannot rebuild.*unknown model name 'no_such_model'"):
        checkpoint.load(path)


def test_only_built_modules_can_be_saved(tmp_path):
    with pytest.raises(ValueError, match="not built with geocanon.checkpoint.build"):
        checkpoint.save(tmp_path / "x.pt", torch.nn.Linear(3, 3))
    assert not (tmp_path / "x.pt").exists()
