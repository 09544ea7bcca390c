"""Several processes (gloo on the CPU): the gathered selection and per-sample state equal one process's, and
``alr train --nproc 2`` / ``alr relabel --nproc 2`` run phase 1 and a relabel round with rank 0 alone writing."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from monai.data import DistributedSampler
from torch import nn
from torch.utils.data import DataLoader

from alr_monai import distributed
from alr_monai.engines.coteaching import CoTeachingEvents, CoTeachingTrainer
from alr_monai.handlers import SmallLossSelectionHandler, VoGHandler
from alr_monai.networks import PeerEnsemble
from alr_monai.relabel.training import SubsetShuffleSampler

NUM_SAMPLES, GLOBAL_BATCH, NUM_CLASSES = 48, 16, 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tiny_peer() -> nn.Module:
    # a batch norm, so the global-batch statistics matter; no bias before it (its gradient is 0 up to float noise,
    # which Adam would blow up into steps of random sign), as in MONAI's ResNet
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, NUM_CLASSES),
    )


def _items() -> list[dict]:
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(NUM_SAMPLES, 1, 8, 8, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (NUM_SAMPLES,), generator=generator)
    return [{"image": images[i], "label": labels[i], "index": i, "id": f"s{i}"} for i in range(NUM_SAMPLES)]


class _Recorder:
    """Each iteration's gathered indices, ids, losses and kept sets."""

    def __init__(self) -> None:
        self.iterations: list[dict] = []

    def attach(self, engine) -> None:
        engine.add_event_handler(CoTeachingEvents.SELECTION_COMPLETED, self._record)

    def _record(self, engine) -> None:
        output = engine.state.output
        index = output["index"]
        ids = output.get("id") or list(engine.state.batch["id"])
        order = torch.argsort(index)  # rank order differs from one process's batch order; compare by sample
        self.iterations.append(
            {
                "index": index[order],
                "ids": [ids[i] for i in order.tolist()],
                "losses": torch.stack(output["losses"])[:, order],
                "kept": [sorted(index[k].tolist()) for k in output["keep"]],
            }
        )


def _train_one_epoch(rank: int, world: int, port: int, out: str) -> None:
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    _train_and_save(rank, world, out)  # its engine and DDP peers are garbage once it returns
    distributed.shutdown_distributed()


def _train_and_save(rank: int, world: int, out: str) -> None:
    torch.manual_seed(0)
    network = PeerEnsemble(_tiny_peer, num_peers=2)
    optimizer = torch.optim.Adam(network.parameters(), lr=0.01)
    items = _items()
    sampler = DistributedSampler(items, shuffle=True, seed=0, even_divisible=False, num_replicas=world, rank=rank)
    loader = DataLoader(items, batch_size=GLOBAL_BATCH // world, sampler=sampler)
    recorder = _Recorder()
    selection = SmallLossSelectionHandler(NUM_SAMPLES, 2, [str(c) for c in range(NUM_CLASSES)])
    vog = VoGHandler(NUM_SAMPLES, NUM_CLASSES, num_snapshots=2)
    trainer = CoTeachingTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=loader,
        network=network,
        optimizer=optimizer,
        forget_rate=0.5,
        num_gradual=0,
        train_handlers=[selection, vog, recorder],
    )
    trainer.run()
    if rank == 0:
        torch.save(
            {
                "iterations": recorder.iterations,
                "mean_loss": selection.mean_loss(),
                "kept": selection.kept.clone(),
                "ids": list(selection.ids),
                "vog": {k: v.clone() for k, v in vog.buffers[0].state_dict().items() if torch.is_tensor(v)},
                "weights": {k: v.clone() for k, v in network.state_dict().items()},
            },
            out,
        )


def test_two_processes_select_and_record_what_one_process_does_on_the_same_global_batch(tmp_path):
    single, double = tmp_path / "one.pt", tmp_path / "two.pt"
    _train_one_epoch(0, 1, 0, str(single))
    mp.spawn(_train_one_epoch, args=(2, _free_port(), str(double)), nprocs=2, join=True)
    one, two = torch.load(single, weights_only=False), torch.load(double, weights_only=False)
    assert len(one["iterations"]) == len(two["iterations"]) == NUM_SAMPLES // GLOBAL_BATCH
    first_one, first_two = one["iterations"][0], two["iterations"][0]
    # same model state, same global batch: the same samples, losses to 1e-6 and exactly the same selection
    assert torch.equal(first_one["index"], first_two["index"])
    assert first_one["ids"] == first_two["ids"] == [f"s{i}" for i in first_one["index"].tolist()]
    torch.testing.assert_close(first_one["losses"], first_two["losses"], atol=1e-6, rtol=0)
    assert first_one["kept"] == first_two["kept"]
    # later iterations start from weights that equal one process's up to float order
    for a, b in zip(one["iterations"], two["iterations"], strict=True):
        assert a["kept"] == b["kept"]
    torch.testing.assert_close(one["mean_loss"], two["mean_loss"], atol=1e-5, rtol=0)
    assert torch.equal(one["kept"], two["kept"])
    assert one["ids"] == two["ids"]
    for key in one["vog"]:
        torch.testing.assert_close(one["vog"][key], two["vog"][key], atol=1e-5, rtol=0, equal_nan=True)
    for key in one["weights"]:
        torch.testing.assert_close(one["weights"][key], two["weights"][key], atol=1e-5, rtol=1e-5)


def test_subset_sampler_shares_one_process_draw_between_ranks():
    for class_balanced in (False, True):
        whole = SubsetShuffleSampler(range(10, 30), num_samples=25, seed=3, class_balanced=class_balanced)
        shares = [SubsetShuffleSampler(range(10, 30), 25, 3, class_balanced, num_replicas=2, rank=r) for r in (0, 1)]
        labels = torch.arange(40) % 3
        for sampler in (whole, *shares):
            sampler.set_indices(list(range(10, 30)), labels)
            sampler.set_epoch(4)
        draw = list(whole)
        assert list(shares[0]) == draw[0::2] and list(shares[1]) == draw[1::2]
        assert len(shares[0]) + len(shares[1]) == len(whole) == 25
    with pytest.raises(ValueError, match="rank 2 is outside the 2 processes"):
        len(SubsetShuffleSampler(range(4), num_replicas=2, rank=2))


def test_one_process_is_rank_0_of_a_world_of_1():
    assert distributed.rank() == 0 and distributed.world_size() == 1 and distributed.is_main_process()
    gathered, local = distributed.gather_rows([torch.arange(3), torch.ones(3, 2)])
    assert local == slice(0, 3) and torch.equal(gathered[0], torch.arange(3))
    assert distributed.gather_objects(["a"]) == ["a"]
    assert distributed.per_process_batch_size(64) == 64


def test_global_batch_norm_without_a_group_is_batch_norm():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    converted = distributed.convert_to_global_batchnorm(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)))
    converted.load_state_dict(plain.state_dict())
    assert isinstance(converted[1], distributed.GlobalBatchNorm)
    x = torch.rand(4, 1, 6, 6)
    with distributed.global_batchnorm_sync(converted):
        torch.testing.assert_close(converted(x), plain(x))
    assert set(converted.state_dict()) == set(plain.state_dict())


def test_shutdown_frees_the_engines_holding_the_group_then_leaves_it(tmp_path):
    distributed.shutdown_distributed()  # outside a group: nothing to leave
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        wrapped = torch.nn.parallel.DistributedDataParallel(nn.Linear(2, 2))
        cycle: dict = {"peer": wrapped}
        cycle["self"] = cycle  # as an Ignite engine and its bound handlers hold each other
        alive = weakref.ref(wrapped)
        del wrapped, cycle
        distributed.shutdown_distributed()
        assert alive() is None  # collected while the group still existed
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _alr(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "alr_monai.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_alr_train_and_relabel_with_two_processes(tmp_path):
    run = tmp_path / "run"
    shrink = ["--preset", "smoke", "--max_epochs", "2", "--noise_estimate#estimate_epoch", "1"]
    trained = _alr("train", "--nproc", "2", "--output_dir", str(run), *shrink, cwd=tmp_path)
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    # rank 0 alone prints the epoch lines and writes the files and TensorBoard events
    assert trained.stdout.count("epoch 2/2") == 1
    assert len(list((run / "tensorboard").glob("events.*"))) == 1
    for name in ("selection.csv", "metrics.json", "models/model.pt", "noise.csv", "classes.json"):
        assert (run / name).is_file(), name
    assert "test" in json.loads((run / "metrics.json").read_text())
    saved = json.loads((run / "run_config.json").read_text())
    assert not any("multi_gpu" in f for f in saved["config_files"])  # a later one-process relabel stays one process

    relabel = ["--relabel#num_rounds", "1", "--relabel#recalibration_epochs", "1", "--relabel#round_budget", "10"]
    relabelled = _alr("relabel", "--nproc", "2", "--run_dir", str(run), *relabel, cwd=tmp_path)
    assert relabelled.returncode == 0, relabelled.stdout[-3000:] + relabelled.stderr[-3000:]
    rounds = (run / "relabel" / "rounds.csv").read_text().splitlines()
    assert len(rounds) == 3  # header, round 0, round 1
    audit = (run / "relabel" / "audit.csv").read_text().splitlines()
    assert len(audit) == 11  # each of the 10 answers applied once, by rank 0
    state = json.loads((run / "relabel" / "state.json").read_text())
    assert state["round"] == 1 and state["budget_spent"] == 10
    assert len(list((run / "tensorboard").glob("events.*"))) == 2  # one per phase


def test_the_backend_follows_the_configured_device_not_the_machine(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert distributed.backend_for(None) == "nccl"
    assert distributed.backend_for("cuda:1") == "nccl"
    # --device cpu on a GPU machine: NCCL cannot reduce CPU tensors, so gloo
    assert distributed.backend_for("cpu") == "gloo"
    assert distributed.backend_for(torch.device("cpu")) == "gloo"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed.backend_for(None) == "gloo"


def test_relabel_processes_join_with_the_device_phase_1_was_given(tmp_path):
    from alr_monai.cli import _run_device

    (tmp_path / "run_config.json").write_text(
        json.dumps({"config_files": [], "overrides": {"device": "cpu"}, "relabel": {}}), encoding="utf-8"
    )
    assert _run_device(str(tmp_path), {}) == "cpu"
    assert _run_device(str(tmp_path), {"device": "cuda:0"}) == "cuda:0"
    assert _run_device(str(tmp_path / "missing"), {}) is None
