"""Patient ids in the query file, and the query order that keeps a patient's images together."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow
from torch import nn
from torch.utils.data import DataLoader

from alr_monai.networks import PeerEnsemble
from alr_monai.relabel import RelabelDriver
from alr_monai.relabel.driver import patient_grouped_order

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "alr_classification" / "configs"
N = 30


def _contiguous(patients: list[str]) -> bool:
    """True when every non-empty patient id occupies one run of consecutive rows."""
    seen, previous = set(), None
    for patient in patients:
        if patient and patient != previous:
            if patient in seen:
                return False
            seen.add(patient)
        previous = patient
    return True


@pytest.mark.parametrize(
    ("patients", "expected"),
    [
        (["A", "B", "A", "C", "B"], [0, 2, 1, 4, 3]),
        (["A", "", "B", "", "A"], [0, 4, 1, 2, 3]),  # images without a patient keep their rank, each alone
        (["", "", ""], [0, 1, 2]),
        ([], []),
    ],
)
def test_patient_grouped_order(patients: list[str], expected: list[int]):
    order = patient_grouped_order(patients)
    assert order == expected
    assert sorted(order) == list(range(len(patients)))
    assert _contiguous([patients[k] for k in order])


def _driver(tmp_path: Path, patient_ids: list[str] | None, group_by_patient: bool = True) -> RelabelDriver:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(N, 4, generator=generator)
    labels = [i % 3 for i in range(N)]
    items = [{"image": images[i], "label": labels[i], "index": i} for i in range(N)]
    network = PeerEnsemble(lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), num_peers=2)
    return RelabelDriver(
        network,
        tmp_path / "relabel",
        ["a", "b", "c"],
        [f"s{i}" for i in range(N)],
        labels,
        [False] * N,  # nothing trusted: the whole set is the pool
        items,
        DataLoader(items, batch_size=8),
        round_budget=12,
        mode="interactive",
        patient_ids=patient_ids,
        group_by_patient=group_by_patient,
        batch_size=8,
        device="cpu",
    )


def test_query_rows_keep_a_patients_images_together_and_ask_the_same_samples(tmp_path: Path):
    # Patients interleave with the ranking: p0 owns samples 0, 7, 14, ...; one sample has no patient id.
    patient_ids = [f"p{i % 7}" for i in range(N)]
    patient_ids[5] = ""
    ranked = _driver(tmp_path / "ranked", patient_ids, group_by_patient=False)
    grouped = _driver(tmp_path / "grouped", patient_ids, group_by_patient=True)
    ranked_rows = ranked.query_rows(ranked.open(), 1)
    grouped_rows = grouped.query_rows(grouped.open(), 1)

    assert len(ranked_rows) == 12
    # The acquisition decides what is asked; grouping only reorders it.
    assert sorted(r["id"] for r in grouped_rows) == sorted(r["id"] for r in ranked_rows)
    by_id = {r["id"]: r for r in ranked_rows}
    assert all(r == by_id[r["id"]] for r in grouped_rows)
    assert all(r["patient_id"] == patient_ids[int(r["id"][1:])] for r in grouped_rows)
    grouped_patients = [r["patient_id"] for r in grouped_rows]
    assert _contiguous(grouped_patients)
    # Patients in the order of their best-ranked image, a patient's images by rank.
    rank = {r["id"]: k for k, r in enumerate(ranked_rows)}
    first_rank = {}
    for r in ranked_rows:
        first_rank.setdefault(r["patient_id"] or r["id"], rank[r["id"]])
    group_keys = [r["patient_id"] or r["id"] for r in grouped_rows]
    assert [first_rank[k] for k in group_keys] == sorted(first_rank[k] for k in group_keys)
    for patient in set(grouped_patients) - {""}:
        ranks = [rank[r["id"]] for r in grouped_rows if r["patient_id"] == patient]
        assert ranks == sorted(ranks)
    # The ranked order interleaves patients, so grouping did change it.
    assert not _contiguous([r["patient_id"] for r in ranked_rows])


def test_query_rows_without_patient_ids_keep_the_ranking(tmp_path: Path):
    plain = _driver(tmp_path / "plain", None)
    ranked = _driver(tmp_path / "ranked", None, group_by_patient=False)
    rows = plain.query_rows(plain.open(), 1)
    assert rows == ranked.query_rows(ranked.open(), 1)
    assert {r["patient_id"] for r in rows} == {""}
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)


def _manifest(folder: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    rows = []
    for i in range(24):
        label = ["abnormal", "normal"][i % 2]
        Image.fromarray(rng.integers(0, 255, size=(10, 10)).astype(np.uint8)).save(folder / f"img{i}.png")
        split = "train" if i < 16 else ("val" if i < 20 else "test")
        # Patients interleave in file order (P0 owns rows 0, 4, 8, 12), as acquisition ranks rarely follow them;
        # val and test images have patients of their own (a patient in two splits is refused).
        patient = f"P{i % 4}" if split == "train" else f"Q{i}"
        rows.append({"id": f"img{i}", "image": f"img{i}.png", "label": label, "patient_id": patient, "split": split})
    with open(folder / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder / "manifest.csv"


@pytest.mark.parametrize("group", [True, False])
def test_bundle_query_file_has_patient_ids_and_patients_together(tmp_path: Path, group: bool):
    manifest = _manifest(tmp_path / "data")
    settings = {
        "manifest_path": str(manifest),
        "max_epochs": 1,
        "batch_size": 4,
        "image_size": [8, 8],
        "network_factory#block_inplanes": [4, 4, 4, 4],
    }
    run = tmp_path / "run"
    files = [CONFIGS / "train.json", CONFIGS / "train_manifest.json"]
    for config_files, extra in (
        (files, {}),
        (
            [*files, CONFIGS / "relabel.json"],
            {
                "relabel#mode": "interactive",
                "relabel#round_budget": 10,
                "relabel#recalibration_epochs": 1,
                "relabel#group_by_patient": group,
            },
        ),
    ):
        workflow = ConfigWorkflow(
            config_file=[str(f) for f in config_files],
            workflow_type="train",
            logging_file=False,
            output_dir=str(run),
            **settings,
            **extra,
        )
        workflow.initialize()
        try:
            workflow.run()
        finally:
            workflow.finalize()
    with open(run / "relabel" / "queries" / "round_1.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    truth = {f"img{i}": f"P{i % 4}" for i in range(16)}
    assert len(rows) == 10
    assert [r["patient_id"] for r in rows] == [truth[r["id"]] for r in rows]  # filled, and the right ones
    scores = [float(r["score"]) for r in rows]
    if group:
        assert _contiguous([r["patient_id"] for r in rows])
    else:
        assert scores == sorted(scores, reverse=True)
