from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from alr_monai.algorithms.vog import VoGBuffer, last_layer_gradient, normalise_per_class


def test_closed_form_gradient_matches_autograd_float64():
    generator = torch.Generator().manual_seed(0)
    batch, dim, classes = 6, 5, 4
    features = torch.randn(batch, dim, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, classes, (batch,), generator=generator)
    layer = torch.nn.Linear(dim, classes).double()
    with torch.no_grad():
        layer.weight.normal_(generator=generator)
        layer.bias.normal_(generator=generator)

    logits = layer(features)
    closed_form = last_layer_gradient(logits, features, labels)
    assert closed_form.shape == (batch, dim + 1) and closed_form.dtype == torch.float64
    assert not closed_form.requires_grad

    for i in range(batch):
        layer.zero_grad()
        F.cross_entropy(layer(features[i : i + 1]), labels[i : i + 1]).backward()
        y = int(labels[i])
        expected = torch.cat([layer.bias.grad[y : y + 1], layer.weight.grad[y]])
        torch.testing.assert_close(closed_form[i], expected, rtol=1e-12, atol=1e-12)


def test_gradient_keeps_half_precision_dtype_and_checks_shapes():
    logits = torch.tensor([[10.0, -10.0], [0.0, 0.0]], dtype=torch.float16)
    features = torch.ones(2, 3, dtype=torch.float16)
    grads = last_layer_gradient(logits, features, torch.tensor([0, 1]))
    assert grads.dtype == torch.float16
    assert grads[1].tolist() == [-0.5] * 4
    with pytest.raises(ValueError):
        last_layer_gradient(logits, features[:1], torch.tensor([0, 1]))


def _numpy_vog(history: list[np.ndarray], num_snapshots: int) -> np.ndarray:
    window = np.stack(history[-num_snapshots:])  # (K, N, D)
    return window.std(axis=0).mean(axis=1)  # np.std is the population std, as in the VoG paper code


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.float16, 2e-3)])
def test_scores_match_numpy_including_wrap_around(dtype, tol):
    generator = torch.Generator().manual_seed(1)
    num_samples, dim, k = 10, 7, 3
    buffer = VoGBuffer(num_samples, dim, num_snapshots=k, dtype=dtype)
    history = []
    assert torch.isnan(buffer.scores()).all()
    for epoch in range(k + 4):  # more than K commits: the ring wraps twice
        grads = torch.randn(num_samples, dim, generator=generator) * (epoch + 1)
        # Record in two shuffled batches, as a data loader would.
        order = torch.randperm(num_samples, generator=generator)
        for part in (order[:4], order[4:]):
            buffer.record(part, grads[part])
        buffer.commit()
        history.append(grads.to(dtype).to(torch.float64).numpy())
        scores = buffer.scores()
        assert scores.dtype == torch.float32 and scores.shape == (num_samples,)
        if epoch == 0:
            assert torch.isnan(scores).all()  # one snapshot has no variance
        else:
            expected = _numpy_vog(history, k)
            np.testing.assert_allclose(scores.numpy(), expected, rtol=tol, atol=tol)
        assert buffer.num_committed == epoch + 1
        assert buffer.ready == (epoch + 1 >= k)


def test_scores_are_cached_during_the_next_epoch():
    buffer = VoGBuffer(4, 2, num_snapshots=2)
    everyone = torch.arange(4)
    buffer.record(everyone, torch.zeros(4, 2))
    buffer.commit()
    buffer.record(everyone, torch.ones(4, 2))
    buffer.commit()
    before = buffer.scores()
    torch.testing.assert_close(before, torch.full((4,), 0.5))
    # The open epoch overwrites the oldest slot; lookups must not change until commit.
    buffer.record(everyone, torch.full((4, 2), 100.0))
    torch.testing.assert_close(buffer.scores(), before)
    torch.testing.assert_close(buffer.scores(torch.tensor([2, 0])), before[[2, 0]])
    buffer.commit()
    torch.testing.assert_close(buffer.scores(), torch.full((4,), 49.5))


def test_missing_samples_use_only_the_epochs_they_were_seen_in():
    buffer = VoGBuffer(3, 1, num_snapshots=3)
    buffer.record(torch.tensor([0, 1, 2]), torch.tensor([[0.0], [0.0], [0.0]]))
    buffer.commit()
    buffer.record(torch.tensor([0, 1]), torch.tensor([[2.0], [4.0]]))  # sample 2 missed this epoch
    buffer.commit()
    scores = buffer.scores()
    assert scores[:2].tolist() == [1.0, 2.0]
    assert torch.isnan(scores[2])
    buffer.record(torch.tensor([2]), torch.tensor([[6.0]]))
    buffer.commit()
    assert buffer.scores()[2].item() == pytest.approx(3.0)
    # Next epoch reuses slot 0; a sample not seen there must not be scored on the stale epoch-0 value.
    buffer.record(torch.tensor([0, 1]), torch.tensor([[2.0], [4.0]]))
    buffer.commit()
    assert torch.isnan(buffer.scores()[2])  # window = epochs 1..3, where sample 2 was seen once
    assert buffer.scores()[0].item() == pytest.approx(0.0)  # epochs 1 and 3 both 2.0


def test_record_validates_input():
    buffer = VoGBuffer(4, 3)
    with pytest.raises(ValueError):
        buffer.record(torch.tensor([0, 1]), torch.zeros(2, 4))
    with pytest.raises(IndexError):
        buffer.record(torch.tensor([0, 4]), torch.zeros(2, 3))
    with pytest.raises(ValueError):
        VoGBuffer(4, 3, num_snapshots=1)


def test_state_dict_round_trip_restores_and_continues_identically():
    generator = torch.Generator().manual_seed(2)
    num_samples, dim, k = 8, 4, 3
    original = VoGBuffer(num_samples, dim, num_snapshots=k, dtype=torch.float16)
    stream = [torch.randn(num_samples, dim, generator=generator) for _ in range(7)]
    for grads in stream[:4]:
        original.record(torch.arange(num_samples), grads)
        original.commit()
    original.record(torch.arange(3), stream[4][:3])  # a checkpoint taken mid-epoch

    saved = io.BytesIO()
    torch.save(original.state_dict(), saved)
    saved.seek(0)
    restored = VoGBuffer(num_samples, dim, num_snapshots=k, dtype=torch.float16)
    restored.load_state_dict(torch.load(saved, weights_only=True))
    assert torch.equal(restored.scores(), original.scores())
    assert (restored.num_committed, restored.position) == (original.num_committed, original.position)

    for buffer in (original, restored):
        buffer.record(torch.arange(3, num_samples), stream[4][3:])
        buffer.commit()
        for grads in stream[5:]:
            buffer.record(torch.arange(num_samples), grads)
            buffer.commit()
    assert torch.equal(restored.scores(), original.scores())
    assert not torch.isnan(restored.scores()).any()


def test_load_state_dict_rejects_mismatched_buffer():
    state = VoGBuffer(8, 4, num_snapshots=3).state_dict()
    with pytest.raises(ValueError, match="num_samples"):
        VoGBuffer(9, 4, num_snapshots=3).load_state_dict(state)
    with pytest.raises(ValueError, match="num_snapshots"):
        VoGBuffer(8, 4, num_snapshots=5).load_state_dict(state)
    state["seen"] = state["seen"][:, :5]
    with pytest.raises(ValueError, match="seen"):
        VoGBuffer(8, 4, num_snapshots=3).load_state_dict(state)
    del state["scores"]
    with pytest.raises(KeyError):
        VoGBuffer(8, 4, num_snapshots=3).load_state_dict(state)


def test_normalise_per_class_z_scores_within_class():
    nan = float("nan")
    scores = torch.tensor([1.0, 3.0, nan, 10.0, 20.0, 30.0, 5.0, nan])
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 3])
    out = normalise_per_class(scores, labels, num_classes=5)
    std1 = np.std([10.0, 20.0, 30.0])
    expected = [-1.0, 1.0, nan, -10 / std1, 0.0, 10 / std1, 0.0, nan]
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-6)
    constant = normalise_per_class(torch.tensor([2.0, 2.0]), torch.tensor([0, 0]), num_classes=1)
    assert constant.tolist() == [0.0, 0.0]
    with pytest.raises(ValueError):
        normalise_per_class(scores, labels, num_classes=3)


def _vog_engine(output: dict, epoch: int):
    from types import SimpleNamespace

    return SimpleNamespace(state=SimpleNamespace(output=output, epoch=epoch, metrics={}), num_gradual=0)


def _feed_vog(handler, epochs: int, num_samples: int = 12, dim: int = 5, classes: int = 3, device: str = "cpu"):
    """Drive a VoGHandler through ``epochs`` epochs of two peers' batches without a trainer."""
    generator = torch.Generator().manual_seed(3)
    labels = torch.arange(num_samples) % classes
    engine = None
    for epoch in range(1, epochs + 1):
        for part in torch.randperm(num_samples, generator=generator).split(5):
            output = {
                "index": part,
                "label": labels[part].to(device),
                "logits": [torch.randn(len(part), classes, generator=generator).to(device) for _ in range(2)],
                "features": [torch.randn(len(part), dim, generator=generator).to(device) for _ in range(2)],
                "scores": {},
            }
            engine = _vog_engine(output, epoch)
            handler._on_losses(engine)
        handler._commit(engine)
    return engine


def test_vog_handler_buffer_stays_on_cpu_and_scores_follow_the_batch_device():
    from alr_monai.handlers import VoGHandler

    handler = VoGHandler(12, 3, num_snapshots=2, mix_ratio=0.5, start_epoch=1)
    assert handler.buffer_device == torch.device("cpu")
    engine = _feed_vog(handler, epochs=3)
    assert [b.device.type for b in handler.buffers] == ["cpu", "cpu"]
    assert all(b._snapshots.device.type == "cpu" for b in handler.buffers)
    scores = engine.state.output["scores"]["vog"]
    assert len(scores) == 2 and all(s.device == engine.state.output["label"].device for s in scores)
    assert all(s.shape == engine.state.output["index"].shape for s in scores)
    # None keeps the old behaviour: the buffer on the features' device (CPU here)
    same = VoGHandler(12, 3, num_snapshots=2, buffer_device=None)
    _feed_vog(same, epochs=1)
    assert same.buffer_device is None and same.buffers[0].device.type == "cpu"


@pytest.mark.parametrize("dtype, itemsize", [("float32", 4), ("float16", 2)])
def test_vog_state_bytes_match_the_documented_formula(dtype, itemsize):
    from alr_monai.algorithms.vog import vog_bytes_per_sample
    from alr_monai.handlers import VoGHandler

    num_samples, dim, k = 12, 5, 3
    handler = VoGHandler(num_samples, 3, num_snapshots=k, dtype=dtype)
    assert handler.state_bytes() == num_samples * 8  # only the labels before the first batch
    _feed_vog(handler, epochs=2, num_samples=num_samples, dim=dim)
    buffers = 2 * num_samples * (k * (dim + 1) * itemsize + k + 4)
    assert vog_bytes_per_sample(dim + 1, k, 2, getattr(torch, dtype)) * num_samples == buffers
    # + the oriented scores (2 peers x 4 bytes) and the int64 labels
    assert handler.state_bytes() == buffers + num_samples * (2 * 4 + 8)
    # the bundle network's figure quoted in the docs: D = 128, K = 5, 2 peers
    assert vog_bytes_per_sample(129, 5, 2, torch.float32) + 2 * 4 + 8 == 5194
    assert vog_bytes_per_sample(129, 5, 2, torch.float16) + 2 * 4 + 8 == 2614


def test_selection_handler_state_bytes_is_linear_in_n():
    from alr_monai.handlers import SmallLossSelectionHandler

    small = SmallLossSelectionHandler(100, 2, ["a", "b"]).state_bytes()
    large = SmallLossSelectionHandler(1000, 2, ["a", "b"]).state_bytes()
    per_sample = (large - small) / 900
    assert 30 <= per_sample <= 30 + 8 + 60  # tensors 30 B + the id string and its list slot


def test_vog_handler_checkpoint_loads_onto_the_buffer_device(tmp_path):
    from alr_monai.handlers import VoGHandler

    handler = VoGHandler(12, 3, num_snapshots=2, mix_ratio=0.5, start_epoch=1, dtype="float16")
    _feed_vog(handler, epochs=3)
    path = tmp_path / "vog.pt"
    torch.save(handler.state_dict(), path)
    state = torch.load(path, weights_only=True, map_location="cpu")
    fresh = VoGHandler(12, 3, num_snapshots=2, mix_ratio=0.5, start_epoch=1, dtype="float16")
    fresh.load_state_dict(state)
    assert [b.device.type for b in fresh.buffers] == ["cpu", "cpu"]
    assert fresh.buffers[0]._snapshots.dtype == torch.float16
    assert torch.equal(fresh.scores(), handler.scores())
    for left, right in zip(fresh._oriented, handler._oriented, strict=True):
        torch.testing.assert_close(left, right, equal_nan=True)
    assert fresh.state_bytes() == handler.state_bytes()


def test_sketch_matrix_is_seeded_and_preserves_squared_norms_on_average():
    from alr_monai.algorithms.vog import sketch_matrix

    assert torch.equal(sketch_matrix(129, 8, seed=3), sketch_matrix(129, 8, seed=3))
    assert not torch.equal(sketch_matrix(129, 8, seed=3), sketch_matrix(129, 8, seed=4))
    vector = torch.randn(129, generator=torch.Generator().manual_seed(0))
    # E ||v R||^2 = ||v||^2: averaged over 400 independent matrices the ratio is within a few percent of 1
    ratios = torch.stack([(vector @ sketch_matrix(129, 8, seed=s)).square().sum() for s in range(400)])
    assert abs(float(ratios.mean() / vector.square().sum()) - 1.0) < 0.05
    with pytest.raises(ValueError, match="sketch_dim"):
        sketch_matrix(129, 0)


def test_sketched_buffer_scores_are_the_rms_std_of_the_projected_gradients():
    from alr_monai.algorithms.vog import sketch_matrix

    generator = torch.Generator().manual_seed(5)
    num_samples, dim, k, m = 6, 10, 3, 4
    buffer = VoGBuffer(num_samples, dim, num_snapshots=k, sketch_dim=m, sketch_seed=7)
    assert buffer._snapshots.shape == (k, num_samples, m)
    stream = [torch.randn(num_samples, dim, generator=generator, dtype=torch.float64) for _ in range(k)]
    for grads in stream:
        buffer.record(torch.arange(num_samples), grads.float())
        buffer.commit()
    projected = np.stack([(g @ sketch_matrix(dim, m, seed=7).double()).numpy() for g in stream])
    expected = np.sqrt(projected.var(axis=0).sum(axis=1) / dim)  # population variance over the K snapshots
    np.testing.assert_allclose(buffer.scores().numpy(), expected, rtol=1e-5)
    # a sample whose gradient never changes has zero VoG, sketched or not
    still = VoGBuffer(1, dim, num_snapshots=2, sketch_dim=m)
    for _ in range(2):
        still.record(torch.tensor([0]), torch.ones(1, dim))
        still.commit()
    assert float(still.scores()[0]) == 0.0
    with pytest.raises(ValueError, match="sketch_dim"):
        VoGBuffer(4, dim, sketch_dim=dim)


def test_sketched_buffer_resumes_exactly_and_refuses_a_different_sketch():
    generator = torch.Generator().manual_seed(1)
    original = VoGBuffer(8, 6, num_snapshots=2, dtype=torch.float16, sketch_dim=3)
    for _ in range(3):
        original.record(torch.arange(8), torch.randn(8, 6, generator=generator))
        original.commit()
    saved = io.BytesIO()
    torch.save(original.state_dict(), saved)
    saved.seek(0)
    state = torch.load(saved, weights_only=True)
    restored = VoGBuffer(8, 6, num_snapshots=2, dtype=torch.float16, sketch_dim=3)
    restored.load_state_dict(state)
    grads = torch.randn(8, 6, generator=generator)
    for buffer in (original, restored):
        buffer.record(torch.arange(8), grads)
        buffer.commit()
    assert torch.equal(restored.scores(), original.scores())
    with pytest.raises(ValueError, match="sketch_dim"):
        VoGBuffer(8, 6, num_snapshots=2, dtype=torch.float16).load_state_dict(state)
    with pytest.raises(ValueError, match="sketch_dim"):
        VoGBuffer(8, 6, num_snapshots=2, dtype=torch.float16, sketch_dim=3, sketch_seed=1).load_state_dict(state)
    # a checkpoint written before the option (no sketch keys) loads into an exact buffer
    exact = VoGBuffer(8, 6, num_snapshots=2).state_dict()
    del exact["sketch_dim"], exact["sketch_seed"]
    VoGBuffer(8, 6, num_snapshots=2).load_state_dict(exact)


def test_sketched_handler_state_bytes_fit_64_bytes_per_snapshot():
    from alr_monai.algorithms.vog import vog_bytes_per_sample
    from alr_monai.handlers import VoGHandler

    num_samples, dim, k = 12, 5, 3
    handler = VoGHandler(num_samples, 3, num_snapshots=k, dtype="float16", sketch_dim=2)
    _feed_vog(handler, epochs=2, num_samples=num_samples, dim=dim)
    assert handler.buffers[0]._snapshots.shape == (k, num_samples, 2)
    buffers = vog_bytes_per_sample(dim + 1, k, 2, torch.float16, sketch_dim=2) * num_samples
    assert handler.state_bytes() == buffers + num_samples * (2 * 4 + 8)
    # a gradient no longer than the sketch stays exact (5 + 1 values, sketch 6)
    short = VoGHandler(num_samples, 3, num_snapshots=k, sketch_dim=6)
    _feed_vog(short, epochs=1, num_samples=num_samples, dim=dim)
    assert short.buffers[0].sketch_dim is None and short.buffers[0]._snapshots.shape == (k, num_samples, dim + 1)
    # the figure in the docs for the bundle's network (D = 128, K = 5, 2 peers, sketch_dim 8, float16)
    per_sample = vog_bytes_per_sample(129, 5, 2, torch.float16, sketch_dim=8) + 2 * 4 + 8
    assert per_sample == 194 and per_sample + 98 <= 64 * 5


def test_sketched_handler_projects_the_float32_gradient_before_storing_it_in_float16():
    from alr_monai.algorithms.vog import sketch_matrix
    from alr_monai.handlers import VoGHandler

    handler = VoGHandler(12, 3, num_snapshots=2, dtype="float16", sketch_dim=2)
    output = _feed_vog(handler, epochs=1).state.output  # the epoch's last batch, stored in slot 0
    for peer, buffer in enumerate(handler.buffers):
        grads = last_layer_gradient(output["logits"][peer], output["features"][peer], output["label"])
        expected = (grads @ sketch_matrix(6, 2)).to(torch.float16)
        assert torch.equal(buffer._snapshots[0, output["index"]], expected)
