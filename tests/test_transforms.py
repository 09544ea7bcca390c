"""Tests for alr_monai.data.transforms: loading DICOM / NIfTI / PNG through MONAI transforms and batching."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from monai.data import CacheDataset, DataLoader, Dataset

from alr_monai.data.manifest import load_manifest
from alr_monai.data.transforms import (
    EnsureIntd,
    ForceChannelsd,
    build_array_transforms,
    build_image_transforms,
)

# Asymmetric 12 x 10 pattern (rows x columns) so a transposition or flip cannot go unnoticed.
PATTERN = (np.arange(120, dtype=np.int64).reshape(12, 10) * 2).astype(np.uint8)


def _root_cause(error: BaseException) -> BaseException:
    # MONAI's Compose wraps a failing transform's exception in RuntimeError("applying transform ...").
    while error.__cause__ is not None:
        error = error.__cause__
    return error


@pytest.mark.parametrize(("in_channels", "num_workers"), [(1, 0), (3, 2)])
def test_manifest_to_batch_mixed_formats(manifest_mixed_dataset, in_channels, num_workers):
    manifest = load_manifest(manifest_mixed_dataset)
    transforms = build_image_transforms(spatial_size=(16, 20), in_channels=in_channels, augment=True)
    loader = DataLoader(Dataset(manifest.items(), transforms), batch_size=6, num_workers=num_workers)

    batch = next(iter(loader))

    image = batch["image"]
    assert image.shape == (6, in_channels, 16, 20)
    assert image.dtype == torch.float32
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    # minmax scaling per image (before resizing, which may average the extremes away a little).
    assert bool((image.amin(dim=(1, 2, 3)) < 0.05).all()) and bool((image.amax(dim=(1, 2, 3)) > 0.95).all())
    assert batch["label"].dtype == torch.int64 and batch["label"].tolist() == [1, 0, 1, 0, 1, 0]
    assert batch["index"].dtype == torch.int64 and batch["index"].tolist() == list(range(6))
    assert batch["id"] == [f"img{i}" for i in range(6)]


def test_cache_dataset_batches_train_split(manifest_mixed_dataset):
    manifest = load_manifest(manifest_mixed_dataset)
    transforms = build_image_transforms(spatial_size=(8, 8), in_channels=1)
    dataset = CacheDataset(manifest.items("train"), transforms, progress=False)
    batch = next(iter(DataLoader(dataset, batch_size=4)))
    assert batch["image"].shape == (4, 1, 8, 8)
    assert batch["index"].tolist() == [0, 1, 2, 3]


def test_formats_agree_on_orientation(tmp_path, imagefile_dicom, imagefile_nifti, imagefile_png):
    files = {
        "dicom": imagefile_dicom(tmp_path / "x.dcm", PATTERN.astype(np.int16)),
        # NIfTI stores x (columns) first, as dcm2niix would write this slice.
        "nifti": imagefile_nifti(tmp_path / "x.nii.gz", PATTERN.T[:, :, None].astype(np.float32)),
        "png": imagefile_png(tmp_path / "x.png", PATTERN),
        "rgb_png": imagefile_png(tmp_path / "rgb.png", np.stack([PATTERN] * 3, axis=-1)),
    }
    # spatial_size = loaded size (x = 10 columns, y = 12 rows) so Resize changes nothing.
    transforms = build_image_transforms(spatial_size=(10, 12), in_channels=1, intensity="none")
    images = {name: transforms({"image": str(path)})["image"] for name, path in files.items()}

    expected = torch.as_tensor(PATTERN.T, dtype=torch.float32)[None]
    for name, image in images.items():
        assert image.shape == (1, 10, 12), name
        assert torch.equal(image, expected), name


def test_ct_window_uses_hounsfield_units_and_clips(tmp_path, imagefile_dicom, manifest_write_csv):
    # Stored values 0..2000 with intercept -1024 -> HU -1024..976.
    stored = np.linspace(0, 2000, 12 * 10).round().astype(np.int16).reshape(12, 10)
    hu = stored.astype(np.float64) - 1024
    path = imagefile_dicom(tmp_path / "ct.dcm", stored, rescale_intercept=-1024)
    manifest = load_manifest(manifest_write_csv(tmp_path / "m.csv", [{"id": "ct", "image": path, "label": "0"}]))
    transforms = build_image_transforms((10, 12), in_channels=1, intensity={"window": [40, 400]})

    image = next(iter(DataLoader(Dataset(manifest.items(), transforms), batch_size=1)))["image"][0, 0]

    expected = np.clip((hu - (40 - 200)) / 400, 0.0, 1.0).T  # window [-160, 240] HU
    np.testing.assert_allclose(image.numpy(), expected, atol=1e-6)
    assert (image == 0).sum() > 0 and (image == 1).sum() > 0  # values on both sides were clipped
    assert float(image.min()) == 0.0 and float(image.max()) == 1.0


def test_intensity_minmax_and_none(tmp_path, imagefile_png):
    path = imagefile_png(tmp_path / "x.png", PATTERN)
    raw = build_image_transforms((10, 12), 1, intensity="none")({"image": str(path)})["image"]
    scaled = build_image_transforms((10, 12), 1, intensity="minmax")({"image": str(path)})["image"]
    assert float(raw.min()) == float(PATTERN.min()) and float(raw.max()) == float(PATTERN.max())
    assert float(scaled.min()) == 0.0 and float(scaled.max()) == 1.0
    assert torch.allclose(scaled, (raw - raw.min()) / (raw.max() - raw.min()))


def test_3d_nifti_volume(tmp_path, imagefile_nifti, manifest_write_csv):
    rng = np.random.default_rng(0)
    rows = [
        {"id": f"v{i}", "image": imagefile_nifti(tmp_path / f"v{i}.nii.gz", rng.normal(size=(9, 8, 7))), "label": i}
        for i in range(2)
    ]
    manifest = load_manifest(manifest_write_csv(tmp_path / "m.csv", rows))
    transforms = build_image_transforms((6, 6, 5), in_channels=1, spatial_dims=3, augment=True)

    batch = next(iter(DataLoader(Dataset(manifest.items(), transforms), batch_size=2)))

    assert batch["image"].shape == (2, 1, 6, 6, 5)
    assert batch["image"].dtype == torch.float32
    assert 0.0 <= float(batch["image"].min()) and float(batch["image"].max()) <= 1.0
    assert batch["label"].tolist() == [0, 1]


def test_dimension_mismatch_names_the_file(tmp_path, imagefile_nifti, imagefile_png):
    volume = imagefile_nifti(tmp_path / "vol.nii.gz", np.zeros((6, 6, 4), dtype=np.float32))
    with pytest.raises(RuntimeError) as excinfo:
        build_image_transforms((8, 8), 1)({"image": str(volume)})
    assert "vol.nii.gz: expected a 2D image" in str(_root_cause(excinfo.value))

    flat = imagefile_png(tmp_path / "flat.png", PATTERN)
    with pytest.raises(RuntimeError) as excinfo:
        build_image_transforms((8, 8, 8), 1, spatial_dims=3)({"image": str(flat)})
    assert "expected a 3D image" in str(_root_cause(excinfo.value))


def test_augment_flips_left_right_sometimes(tmp_path, imagefile_png):
    path = imagefile_png(tmp_path / "x.png", PATTERN)
    plain = build_image_transforms((10, 12), 1, intensity="none")({"image": str(path)})["image"]
    augmented = build_image_transforms((10, 12), 1, intensity="none", augment=True).set_random_state(seed=0)

    outputs = [augmented({"image": str(path)})["image"] for _ in range(20)]

    flipped = [torch.equal(out, plain.flip(1)) for out in outputs]
    unchanged = [torch.equal(out, plain) for out in outputs]
    assert all(f or u for f, u in zip(flipped, unchanged, strict=True))
    assert any(flipped) and any(unchanged)


def test_reader_choice_ignores_monai_dicom_reader_env(tmp_path, monkeypatch, imagefile_png, imagefile_dicom):
    # With MONAI_DICOM_READER=pydicom, LoadImage's automatic choice hands PNGs to PydicomReader; ours must not.
    monkeypatch.setenv("MONAI_DICOM_READER", "pydicom")
    transforms = build_image_transforms((10, 12), 1, intensity="none")
    png = transforms({"image": str(imagefile_png(tmp_path / "x.png", PATTERN))})["image"]
    dcm = transforms({"image": str(imagefile_dicom(tmp_path / "x.dcm", PATTERN.astype(np.int16)))})["image"]
    assert torch.equal(png, dcm)


def test_palette_png_loads_as_intensities(tmp_path):
    from PIL import Image

    indices = (PATTERN % 4).astype(np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette(sum(([200 - 50 * k] * 3 for k in range(4)), []) + [0] * (3 * 252))
    path = tmp_path / "palette.png"
    image.save(path)

    loaded = build_image_transforms((10, 12), 1, intensity="none")({"image": str(path)})["image"]

    assert torch.equal(loaded[0], torch.as_tensor(200 - 50 * indices.T, dtype=torch.float32))


def test_transform_chains_pickle(tmp_path, imagefile_png):
    # DataLoader workers started with "spawn" (and DDP launchers) pickle the dataset with its transforms.
    path = imagefile_png(tmp_path / "x.png", PATTERN)
    chain = pickle.loads(pickle.dumps(build_image_transforms((8, 8), 3, augment=True)))
    assert chain({"image": str(path)})["image"].shape == (3, 8, 8)
    assert pickle.loads(pickle.dumps(build_array_transforms(1, (8, 8), augment=True))) is not None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"spatial_size": (8, 8), "in_channels": 1, "intensity": "zscore"}, "unknown intensity"),
        ({"spatial_size": (8, 8), "in_channels": 1, "intensity": {"window": [40]}}, "center, width"),
        ({"spatial_size": (8, 8), "in_channels": 1, "intensity": {"window": [40, 0]}}, "width > 0"),
        ({"spatial_size": (8, 8), "in_channels": 1, "intensity": {"level": 40}}, "unknown intensity"),
        ({"spatial_size": (8, 8, 8), "in_channels": 1}, "spatial_dims is 2"),
        ({"spatial_size": (8, 8), "in_channels": 0}, "channels must be >= 1"),
        ({"spatial_size": (8, 8), "in_channels": 1, "spatial_dims": 4}, "spatial_size"),
    ],
)
def test_invalid_configuration(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_image_transforms(**kwargs)


def test_array_transforms_medmnist_batch():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, size=(28, 28), dtype=np.uint8)
    rgb = rng.integers(0, 256, size=(28, 28, 3), dtype=np.uint8)
    items = [
        {"image": gray, "label": np.array([2]), "index": np.int64(0), "id": "g"},
        {"image": rgb, "label": 1, "index": 1, "id": "c"},
    ]

    batch = next(iter(DataLoader(Dataset(items, build_array_transforms(3, (32, 32), augment=True)), batch_size=2)))

    assert batch["image"].shape == (2, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert 0.0 <= float(batch["image"].min()) and float(batch["image"].max()) <= 1.0
    assert batch["label"].dtype == torch.int64 and batch["label"].tolist() == [2, 1]
    assert batch["index"].dtype == torch.int64 and batch["index"].tolist() == [0, 1]
    assert batch["id"] == ["g", "c"]


def test_array_transforms_exact_scaling_and_channels():
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    rgb = np.stack([gray, gray, np.zeros_like(gray)], axis=-1)

    out_gray = build_array_transforms(1)({"image": gray, "label": 0})["image"]
    out_rgb = build_array_transforms(1)({"image": rgb, "label": 0})["image"]
    out_rgb3 = build_array_transforms(3)({"image": rgb, "label": 0})["image"]

    expected = torch.as_tensor(gray, dtype=torch.float32)[None] / 255.0
    assert torch.equal(out_gray, expected)
    assert torch.allclose(out_rgb, expected * 2 / 3)  # mean over R, G, B
    assert torch.equal(out_rgb3[2], torch.zeros(16, 16)) and torch.equal(out_rgb3[0], expected[0])


def test_array_transforms_3d_volume():
    volume = np.full((10, 12, 14), 51, dtype=np.uint8)
    out = build_array_transforms(1, (8, 8, 8), spatial_dims=3)({"image": volume, "label": 0})["image"]
    assert out.shape == (1, 8, 8, 8)
    assert torch.allclose(out, torch.full((1, 8, 8, 8), 0.2))


def test_array_transforms_reject_bad_input():
    with pytest.raises(RuntimeError) as excinfo:
        build_array_transforms(1)({"image": np.zeros((4, 4, 5), dtype=np.uint8)})
    assert "expected a 2D array" in str(_root_cause(excinfo.value))
    with pytest.raises(RuntimeError) as excinfo:
        build_array_transforms(1)({"image": np.zeros((4, 4), dtype=np.int32)})
    assert "uint8 or floating" in str(_root_cause(excinfo.value))


def test_force_channels_alpha_and_impossible():
    gray_alpha = torch.stack([torch.full((4, 4), 0.25), torch.ones(4, 4)])
    assert torch.equal(ForceChannelsd("image", 1)({"image": gray_alpha})["image"], gray_alpha[:1])
    assert ForceChannelsd("image", 3)({"image": gray_alpha})["image"].shape == (3, 4, 4)
    rgba = torch.rand(4, 5, 5)
    assert torch.equal(ForceChannelsd("image", 3)({"image": rgba})["image"], rgba[:3])
    with pytest.raises(ValueError, match="5 channels into 3"):
        ForceChannelsd("image", 3)({"image": torch.rand(5, 4, 4)})


def test_ensure_int_converts_and_rejects():
    out = EnsureIntd()({"label": np.array([[4]]), "index": torch.tensor(7)})
    assert out == {"label": 4, "index": 7}
    assert type(out["label"]) is int and type(out["index"]) is int
    with pytest.raises(ValueError, match="expected one integer"):
        EnsureIntd()({"label": np.array([0.5])})
    with pytest.raises(ValueError, match="expected one integer"):
        EnsureIntd()({"label": np.array([1, 2])})
