"""Starting from your own weights: ``pretrained`` (``alr train --pretrained PATH``), nothing downloaded.

A phase-1 model.pt round trip through the bundle, a single network's state dict (a MONAI bundle's model.pt) for
both peers, a head with another class count re-initialised, and mismatches named key by key.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow
from monai.networks.nets import ResNet

from alr_monai import cli
from alr_monai.networks import PeerEnsemble, load_pretrained, read_state_dict

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "alr_classification" / "configs"
TINY = {"batch_size": 32, "network_factory#block_inplanes": [4, 8, 8, 8]}


def resnet(num_classes: int = 3, channels: int = 1, width: int = 4) -> functools.partial:
    return functools.partial(
        ResNet,
        block="basic",
        layers=[1, 1, 1, 1],
        block_inplanes=[width, 8, 8, 8],
        spatial_dims=2,
        n_input_channels=channels,
        num_classes=num_classes,
    )


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], skip: tuple[str, ...] = ()) -> bool:
    keys = [k for k in a if not k.startswith(skip)]
    return all(torch.equal(a[k], b[k]) for k in keys)


# ------------------------------------------------------------------------------------- the bundle round trip
@pytest.fixture(scope="module")
def tiny_dataset_dir(tmp_path_factory: pytest.TempPathFactory, write_tiny_bloodmnist) -> Path:
    return write_tiny_bloodmnist(tmp_path_factory.mktemp("tiny_bloodmnist"), {"train": 8, "val": 2, "test": 2})


def _workflow(output_dir: Path, dataset_dir: Path, **overrides) -> ConfigWorkflow:
    return ConfigWorkflow(
        config_file=str(CONFIGS / "train.json"),
        workflow_type="train",
        logging_file=False,
        output_dir=str(output_dir),
        dataset_dir=str(dataset_dir),
        **{**TINY, **overrides},
    )


def test_a_new_run_starts_from_a_phase1_model(tiny_dataset_dir: Path, tmp_path: Path):
    first = _workflow(tmp_path / "first", tiny_dataset_dir, max_epochs=1)
    first.initialize()
    first.run()
    first.finalize()
    saved = torch.load(tmp_path / "first" / "models" / "model.pt", weights_only=True)

    second = _workflow(
        tmp_path / "second",
        tiny_dataset_dir,
        max_epochs=1,
        seed=7,
        pretrained=str(tmp_path / "first" / "models" / "model.pt"),
    )
    second.initialize()
    network = second.parser.get_parsed_content("network")
    assert same(saved, network.state_dict())  # every weight, both peers, before any training step
    fresh = _workflow(tmp_path / "fresh", tiny_dataset_dir, max_epochs=1, seed=7)
    fresh.initialize()
    assert not same(saved, fresh.parser.get_parsed_content("network").state_dict())
    # the trainer trains the loaded weights (and the run goes through)
    second.run()
    second.finalize()
    fresh.finalize()


# ----------------------------------------------------------------------------------------- load_pretrained
def test_one_network_state_dict_starts_both_peers(tmp_path: Path):
    single = resnet()()
    path = tmp_path / "model.pt"
    torch.save(single.state_dict(), path)
    ensemble = PeerEnsemble(resnet(), num_peers=2)
    load_pretrained(ensemble, path)
    for peer in ensemble.peers:
        assert same(single.state_dict(), peer.state_dict())


def test_checkpoint_dicts_and_ddp_prefixes_are_unwrapped(tmp_path: Path):
    single = resnet()()
    for entry in ("model", "network", "state_dict"):
        path = tmp_path / f"{entry}.pt"
        state = {f"module.{k}": v for k, v in single.state_dict().items()}
        torch.save({entry: state, "epoch": torch.tensor(3)}, path)
        assert same(single.state_dict(), read_state_dict(path))


def test_dropout_head_names_are_matched(tmp_path: Path):
    single = resnet()()
    path = tmp_path / "model.pt"
    torch.save(single.state_dict(), path)
    ensemble = PeerEnsemble(resnet(), num_peers=2, dropout=0.2)  # fc becomes fc.1
    load_pretrained(ensemble, path)
    assert torch.equal(ensemble.peers[1].fc[1].weight, single.fc.weight)


def test_another_class_count_reinitialises_the_head_with_a_message(tmp_path: Path, caplog):
    source = resnet(num_classes=8)()
    path = tmp_path / "model.pt"
    torch.save(source.state_dict(), path)
    torch.manual_seed(0)
    ensemble = PeerEnsemble(resnet(num_classes=3), num_peers=2)
    head_before = ensemble.peers[0].fc.weight.detach().clone()
    with caplog.at_level(logging.WARNING, logger="alr_monai"):
        load_pretrained(ensemble, path)
    assert "classifier head fc has 8 classes, this run 3: the head is re-initialised" in caplog.text
    assert torch.equal(ensemble.peers[0].fc.weight, head_before)
    assert same(source.state_dict(), ensemble.peers[1].state_dict(), skip=("fc.",))


def test_a_mismatch_is_named_key_by_key(tmp_path: Path):
    path = tmp_path / "other.pt"
    torch.save(resnet(channels=3, width=8)().state_dict(), path)  # RGB, wider first block
    ensemble = PeerEnsemble(resnet(channels=1, width=4), num_peers=2)
    before = {k: v.clone() for k, v in ensemble.state_dict().items()}
    with pytest.raises(ValueError) as info:
        load_pretrained(ensemble, path)
    message = str(info.value)
    assert f"pretrained weights {path} do not fit this network (peer 0)" in message
    assert "shape differs: conv1.weight (file [8, 3, 7, 7], network [4, 1, 7, 7])" in message
    assert "bn1.weight (file [8], network [4])" in message
    assert "--pretrained_strict false" in message
    assert same(before, ensemble.state_dict())  # nothing loaded


def test_missing_and_unexpected_keys_are_named(tmp_path: Path, caplog):
    state = resnet()().state_dict()
    state.pop("layer4.0.bn1.weight")
    state["extra.weight"] = torch.zeros(2)
    path = tmp_path / "edited.pt"
    torch.save(state, path)
    with pytest.raises(
        ValueError, match=r"missing in the file: layer4\.0\.bn1\.weight; not in this network: extra\.weight"
    ):
        load_pretrained(PeerEnsemble(resnet(), num_peers=1), path)
    # not strict: what fits is loaded, the rest named in a warning
    ensemble = PeerEnsemble(resnet(), num_peers=1)
    with caplog.at_level(logging.WARNING, logger="alr_monai"):
        load_pretrained(ensemble, path, strict=False)
    assert "the rest left as initialised" in caplog.text and "layer4.0.bn1.weight" in caplog.text
    assert torch.equal(ensemble.peers[0].conv1.weight, state["conv1.weight"])


def test_a_file_without_weights_is_refused_clearly(tmp_path: Path):
    path = tmp_path / "notes.pt"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(ValueError, match="holds a dict with keys \\['epoch', 'lr'\\], not a network state dict"):
        load_pretrained(PeerEnsemble(resnet()), path)
    text = tmp_path / "model.ts"
    text.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot be read as a PyTorch state dict"):
        load_pretrained(PeerEnsemble(resnet()), text)
    assert load_pretrained(net := PeerEnsemble(resnet()), None) is net


def test_alr_train_refuses_a_missing_pretrained_file_before_writing(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--output_dir", str(tmp_path / "run"), "--pretrained", str(tmp_path / "nope.pt")])
    assert exit_.value.code == 2
    assert f"--pretrained file {tmp_path / 'nope.pt'} not found" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
