"""CUDA checks (marker ``cuda``): AMP against float32, selection and VoG on CUDA against the CPU, checkpoints moved
between CUDA and the CPU. Skipped on a machine without CUDA; ``bash scripts/gpu_check.sh`` runs them on a GPU."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Events
from monai.networks.nets import ResNet

from alr_monai.algorithms.policy import SelectionPolicy
from alr_monai.algorithms.vog import VoGBuffer, last_layer_gradient
from alr_monai.engines import CoTeachingTrainer
from alr_monai.handlers import RunCheckpointer, VoGHandler
from alr_monai.networks import PeerEnsemble

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs a CUDA device; run `bash scripts/gpu_check.sh` on a GPU machine (README, Development, 'The GPU check')",
    ),
]

NUM_CLASSES = 4


def _network() -> torch.nn.Module:
    return ResNet(
        block="basic",
        layers=[1, 1, 1, 1],
        block_inplanes=[8, 16, 32, 64],
        spatial_dims=2,
        n_input_channels=1,
        num_classes=NUM_CLASSES,
    )


def _batches(count: int = 4, size: int = 32, batch: int = 16, seed: int = 0) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    out = []
    for b in range(count):
        labels = torch.randint(0, NUM_CLASSES, (batch,), generator=generator)
        images = torch.randn(batch, 1, size, size, generator=generator) + labels.view(-1, 1, 1, 1).float()
        out.append({"image": images, "label": labels, "index": torch.arange(b * batch, (b + 1) * batch)})
    return out


@pytest.mark.parametrize("channels_last", [False, True])
def test_amp_forward_and_backward_match_float32(channels_last):
    torch.manual_seed(0)
    network = _network().cuda().train()
    batch = _batches(1)[0]
    images, labels = batch["image"].cuda(), batch["label"].cuda()
    if channels_last:
        network = network.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    reference = copy.deepcopy(network)

    logits32 = reference(images)
    F.cross_entropy(logits32, labels).backward()
    with torch.autocast("cuda"):
        logits16 = network(images)
    assert logits16.dtype == torch.float16
    F.cross_entropy(logits16.float(), labels).backward()

    assert torch.allclose(logits16.float(), logits32, atol=3e-2, rtol=3e-2)
    for (name, p16), p32 in zip(network.named_parameters(), reference.parameters(), strict=True):
        error = (p16.grad - p32.grad).norm() / p32.grad.norm().clamp_min(1e-12)
        assert error < 5e-2, f"{name}: relative gradient error {float(error):.3g}"


def test_coteaching_iteration_with_amp_matches_float32():
    """One trainer step from the same weights: per-sample losses close, so the small-loss selection agrees."""
    torch.manual_seed(0)
    base = PeerEnsemble(_network, num_peers=2)
    batch = _batches(1, batch=64)[0]
    results = {}
    for amp in (False, True):
        network = copy.deepcopy(base).cuda()
        trainer = CoTeachingTrainer(
            device=torch.device("cuda"),
            max_epochs=1,
            train_data_loader=[batch],
            network=network,
            optimizer=torch.optim.SGD(network.parameters(), lr=0.0),
            forget_rate=0.25,
            num_gradual=0,
            amp=amp,
        )
        trainer.run()
        results[amp] = trainer.state.output
    for k in range(2):
        assert torch.allclose(results[True]["losses"][k], results[False]["losses"][k], atol=5e-2, rtol=5e-2)
        agreement = (results[True]["keep"][k] == results[False]["keep"][k]).float().mean()
        assert agreement >= 0.9


def test_selection_and_vog_on_cuda_equal_the_cpu():
    torch.manual_seed(0)
    batch, dim = 64, 33
    labels = torch.randint(0, NUM_CLASSES, (batch,))
    losses = [torch.rand(batch), torch.rand(batch)]
    vog = [torch.rand(batch), torch.rand(batch)]
    rates = torch.tensor([0.1, 0.3, 0.5, 0.2])
    policy_cpu = SelectionPolicy(fill={"vog": 0.2}, per_class=True)
    policy_gpu = SelectionPolicy(fill={"vog": 0.2}, per_class=True)
    keep_cpu = policy_cpu.select({"loss": losses, "vog": vog}, labels, rates)
    keep_gpu = policy_gpu.select(
        {"loss": [x.cuda() for x in losses], "vog": [x.cuda() for x in vog]}, labels.cuda(), rates
    )
    for a, b in zip(keep_cpu, keep_gpu, strict=True):
        assert torch.equal(a, b.cpu())

    # the closed-form last-layer gradient and the VoG buffer, fed the same epochs on either device
    buffers = {
        "cpu": VoGBuffer(batch, dim, num_snapshots=3, device="cpu", sketch_dim=8),
        "cuda": VoGBuffer(batch, dim, num_snapshots=3, device="cuda", sketch_dim=8),
    }
    for _epoch in range(4):
        logits = torch.randn(batch, NUM_CLASSES)
        features = torch.randn(batch, dim - 1)
        grads = last_layer_gradient(logits, features, labels)
        grads_gpu = last_layer_gradient(logits.cuda(), features.cuda(), labels.cuda())
        assert torch.allclose(grads, grads_gpu.cpu(), atol=1e-5)
        buffers["cpu"].record(torch.arange(batch), grads)
        buffers["cuda"].record(torch.arange(batch).cuda(), grads_gpu)
        for buffer in buffers.values():
            buffer.commit()
    assert torch.allclose(buffers["cpu"].scores(), buffers["cuda"].scores().cpu(), atol=1e-4, rtol=1e-4)


def _trainer(device: str, ckpt_dir: Path, max_epochs: int) -> tuple[CoTeachingTrainer, dict]:
    torch.manual_seed(0)
    network = PeerEnsemble(_network, num_peers=2).to(device)
    optimizer = torch.optim.Adam(network.parameters(), 1e-3)
    vog = VoGHandler(64, NUM_CLASSES, num_snapshots=2, mix_ratio=0.2)
    objects = {"network": network, "optimizer": optimizer, "vog": vog}
    trainer = CoTeachingTrainer(
        device=torch.device(device),
        max_epochs=max_epochs,
        train_data_loader=_batches(4),
        network=network,
        optimizer=optimizer,
        forget_rate=0.25,
        num_gradual=0,
        selection_policy=SelectionPolicy(fill={"vog": 0.2}),
        train_handlers=[vog, RunCheckpointer(ckpt_dir, objects, resume=True, map_location=device)],
    )
    return trainer, objects


def _state(objects: dict) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in objects["network"].state_dict().items()}


@pytest.mark.parametrize("first, second", [("cuda", "cpu"), ("cpu", "cuda")])
def test_checkpoint_saved_on_one_device_resumes_on_the_other(tmp_path, first, second):
    trainer, objects = _trainer(first, tmp_path, max_epochs=2)
    trainer.run()
    saved = _state(objects)
    saved_vog = objects["vog"].state_dict()
    resumed, resumed_objects = _trainer(second, tmp_path, max_epochs=3)
    loaded: dict = {}

    @resumed.on(Events.EPOCH_STARTED)
    def capture(_engine) -> None:  # after the checkpointer loaded epoch 2, before epoch 3 trains
        loaded.setdefault("epoch", resumed.state.epoch)
        loaded.setdefault("weights", _state(resumed_objects))
        loaded.setdefault("devices", {p.device.type for p in resumed_objects["network"].parameters()})
        moments = [t for s in resumed_objects["optimizer"].state.values() for t in s.values() if torch.is_tensor(t)]
        loaded.setdefault("optimizer_devices", {t.device.type for t in moments if t.dim() > 0})

    resumed.run()
    assert loaded["epoch"] == 3 and resumed.state.epoch == 3  # only the missing epoch ran
    assert loaded["devices"] == {second} and loaded["optimizer_devices"] == {second}
    for name, value in saved.items():
        assert torch.equal(loaded["weights"][name], value), name
    vog_now = resumed_objects["vog"].state_dict()
    assert set(vog_now) == set(saved_vog)
