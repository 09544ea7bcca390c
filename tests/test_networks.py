"""Networks picked by name (``network_name``): each builds in 2D and 3D, exposes its features, and trains phase 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow

from alr_monai.algorithms.acquisition import add_dropout_before_last_linear
from alr_monai.keys import NETWORK_NAMES as KEY_NAMES
from alr_monai.networks import NETWORK_NAMES, FeatureTap, PeerEnsemble, build_classifier, classifier_factory

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "bundles" / "alr_classification" / "configs" / "train.json"
# penultimate feature width of each network (the last linear layer's input)
FEATURES = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "densenet121": 1024, "efficientnet-b0": 1280}


def test_key_choices_match_the_factory():
    assert KEY_NAMES == NETWORK_NAMES == tuple(FEATURES)


@pytest.mark.parametrize("name", NETWORK_NAMES)
@pytest.mark.parametrize("spatial_dims, size", [(2, 32), (3, 32)])
def test_each_network_builds_runs_and_exposes_its_features(name, spatial_dims, size):
    torch.manual_seed(0)
    network = build_classifier(name, spatial_dims, in_channels=1, num_classes=3).eval()
    tap = FeatureTap(network)
    with torch.no_grad():
        logits = network(torch.randn(2, 1, *([size] * spatial_dims)))
    assert logits.shape == (2, 3)
    assert tap.pop().shape == (2, FEATURES[name])  # what VoG's closed-form gradient and coreset read


def test_dropout_for_bald_wraps_the_head_of_a_named_network():
    network = add_dropout_before_last_linear(build_classifier("densenet121", 2, 1, 3), 0.5)
    assert any(isinstance(m, torch.nn.Dropout) for m in network.modules())
    assert build_classifier("densenet121", 2, 1, 3).class_layers.out.in_features == 1024


def test_unknown_name_and_dims_are_refused_with_the_choices():
    with pytest.raises(ValueError, match="resnet18, resnet34"):
        build_classifier("resnet19", 2, 1, 3)
    with pytest.raises(ValueError, match="choose one of"):
        classifier_factory("vgg", 2, 1, 3, default=lambda: torch.nn.Linear(1, 1))
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
        build_classifier("resnet18", 1, 1, 3)


def test_null_name_keeps_the_bundle_factory_and_a_name_makes_fresh_peers():
    default = lambda: torch.nn.Linear(2, 2)  # noqa: E731
    assert classifier_factory(None, 2, 1, 3, default) is default
    ensemble = PeerEnsemble(classifier_factory("resnet18", 2, 1, 3, default), num_peers=2)
    first, second = (next(p.parameters()) for p in ensemble.peers)
    assert not torch.equal(first, second)  # each peer its own initialisation


def test_phase1_trains_one_epoch_with_a_named_network(tmp_path, write_tiny_bloodmnist):
    (tmp_path / "data").mkdir()
    data = write_tiny_bloodmnist(tmp_path / "data", {"train": 6, "val": 2, "test": 2})
    out = tmp_path / "run"
    workflow = ConfigWorkflow(
        config_file=str(TRAIN),
        workflow_type="train",
        logging_file=False,
        output_dir=str(out),
        dataset_dir=str(data),
        batch_size=16,
        max_epochs=1,
        network_name="resnet18",
        channels_last=True,
    )
    workflow.initialize()
    try:
        workflow.run()
    finally:
        workflow.finalize()
    peer = workflow.parser.get_parsed_content("network").peers[0]
    assert type(peer).__name__ == "ResNet" and peer.fc.in_features == 512
    assert peer.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    meta = json.loads((out / "models" / "metadata.json").read_text())
    assert meta["alr_monai"]["network"]["name"] == "resnet18"
    assert (out / "selection.csv").is_file() and (out / "models" / "model.pt").is_file()
    assert json.loads((out / "metrics.json").read_text())


def test_channels_last_trains_the_same_network_as_the_default_format():
    """The trainer converts the peers in place: the optimizer still updates them, to the same numbers."""

    torch.manual_seed(0)
    base = PeerEnsemble(lambda: build_classifier("resnet18", 2, 1, 3), num_peers=2)
    generator = torch.Generator().manual_seed(1)
    batch = {
        "image": torch.randn(8, 1, 32, 32, generator=generator),
        "label": torch.arange(8) % 3,
        "index": torch.arange(8),
    }
    weights = {}
    # one intra-op thread: with two, oneDNN's channels-last kernels sum in another order, and one SGD step of a
    # ResNet-18 then differs by ~4e-3 in the first layer (float order, not a wrong conversion)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _train_both_formats(base, batch, weights)
    finally:
        torch.set_num_threads(threads)
    assert weights[True].is_contiguous(memory_format=torch.channels_last)
    assert not torch.allclose(weights[True], base.peers[0].conv1.weight)  # the step reached the converted weights
    difference = (weights[True] - weights[False]).abs().max()
    assert difference < 1e-4, float(difference)


def _train_both_formats(base, batch, weights) -> None:
    from alr_monai.engines import CoTeachingTrainer

    for channels_last in (False, True):
        network = PeerEnsemble(lambda: build_classifier("resnet18", 2, 1, 3), num_peers=2)
        network.load_state_dict(base.state_dict())
        trainer = CoTeachingTrainer(
            device="cpu",
            max_epochs=1,
            train_data_loader=[batch],
            network=network,
            optimizer=torch.optim.SGD(network.parameters(), lr=0.1),
            forget_rate=0.0,  # no cut: a float-level difference must not flip which samples are kept
            num_gradual=0,
            channels_last=channels_last,
        )
        trainer.run()
        weights[channels_last] = network.peers[0].conv1.weight.detach()


def test_channels_last_refuses_batches_that_are_not_images_or_volumes():
    from alr_monai.engines import CoTeachingTrainer

    network = PeerEnsemble(lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)), num_peers=2)
    trainer = CoTeachingTrainer(
        "cpu", 1, [], network, torch.optim.SGD(network.parameters(), lr=0.1), channels_last=True
    )
    with pytest.raises(ValueError, match="channels_last needs 2D or 3D batches"):
        trainer._to_channels_last(torch.zeros(2, 4))


def test_inference_configs_rebuild_the_named_network(tmp_path):
    from monai.bundle import ConfigParser

    from alr_monai.export import write_model_metadata
    from alr_monai.workflow import bundle_file

    parser = ConfigParser()
    parser.read_config(bundle_file("inference.json"))
    parser.update({"network_name": "densenet121", "in_channels": 1, "num_classes": 3, "spatial_dims": 2})
    parser["device"] = "cpu"
    assert type(parser.get_parsed_content("network_def").peers[0]).__name__ == "DenseNet121"

    # a manifest model: inference_manifest.json reads the name from models/metadata.json
    models = tmp_path / "models"
    factory = classifier_factory("resnet34", 2, 1, 3, default=lambda: None)
    write_model_metadata(
        models / "metadata.json", PeerEnsemble(factory), ["a", "b", "c"], [1, 32, 32], network_factory=factory
    )
    parser = ConfigParser()
    parser.read_config([bundle_file("inference.json"), bundle_file("inference_manifest.json")])
    parser.update({"output_dir": str(tmp_path), "device": "cpu"})
    assert parser.get_parsed_content("network_name") == "resnet34"
    peer = parser.get_parsed_content("network_def").peers[0]
    assert type(peer).__name__ == "ResNet" and len(peer.layer1) == 3  # ResNet-34: 3 blocks in its first stage
