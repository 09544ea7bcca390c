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
