"""Channels done right (issue 12, item 3): sequences as channels only when a channel axis is named, no silent
alpha dropping for anything but a PNG's real alpha, counts that do not fit refused naming the file and the flag."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import new_dicom_dataset

from alr_monai.data.image_errors import ImageFileError, find_image_error
from alr_monai.data.transforms import build_image_transforms


def _error(chain, path: Path) -> ImageFileError:
    with pytest.raises(Exception) as excinfo:
        chain({"image": str(path)})
    found = find_image_error(excinfo.value)
    assert found is not None, excinfo.value
    return found


def _exact(shape, in_channels: int, **kwargs):
    """A chain that keeps the values and the size, so channels can be compared with the file's volumes."""
    return build_image_transforms(list(shape), in_channels, spatial_dims=len(shape), intensity="none", **kwargs)


def write_rgb_dicom(path: Path, rgb: np.ndarray) -> Path:
    """An 8-bit RGB secondary-capture DICOM of ``rgb`` shaped (rows, columns, 3)."""
    from pydicom.uid import SecondaryCaptureImageStorage

    ds = new_dicom_dataset(SecondaryCaptureImageStorage)
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = rgb.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def two_timepoints(tmp_path, imagefile_nifti) -> tuple[Path, np.ndarray]:
    volumes = np.random.default_rng(0).normal(size=(6, 5, 4, 2)).astype(np.float32)
    return imagefile_nifti(tmp_path / "fmri.nii.gz", volumes), volumes


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_4d_nifti_is_refused_without_a_channel_axis(two_timepoints, spatial_dims):
    path, _ = two_timepoints
    error = _error(build_image_transforms([8] * spatial_dims, 1, spatial_dims=spatial_dims), path)
    assert error.kind == "4D"
    assert str(error).startswith(f"{path}: a 4D NIfTI of shape (6, 5, 4, 2)")
    assert "--channel_axis 3" in error.fix and "--in_channels 2" in error.fix


@pytest.mark.parametrize("axis", [3, -1])
def test_4d_nifti_volumes_become_channels_when_named(two_timepoints, axis):
    path, volumes = two_timepoints
    image = _exact((6, 5, 4), 2, channel_axis=axis)({"image": str(path)})["image"]
    assert image.shape == (2, 6, 5, 4)
    for k in range(2):
        assert torch.allclose(image[k], torch.as_tensor(volumes[..., k]))


def test_4d_nifti_never_silently_becomes_its_first_volume(two_timepoints):
    path, _ = two_timepoints
    error = _error(_exact((6, 5, 4), 1, channel_axis=3), path)
    assert error.kind == "wrong channels"
    assert "2 channels" in str(error) and "in_channels = 1" in str(error) and "--in_channels 2" in str(error)


def test_four_sequence_mr_keeps_every_sequence_in_order(tmp_path, imagefile_nifti):
    # T1, T1c, T2, FLAIR as the 4th axis: the 4th is not an "alpha" to drop.
    sequences = np.stack([np.full((5, 6, 3), float(k)) for k in range(4)], axis=-1).astype(np.float32)
    path = imagefile_nifti(tmp_path / "brats.nii.gz", sequences)
    image = _exact((5, 6, 3), 4, channel_axis=3)({"image": str(path)})["image"]
    assert image.shape == (4, 5, 6, 3)
    assert [float(image[k].mean()) for k in range(4)] == [0.0, 1.0, 2.0, 3.0]
    assert _error(_exact((5, 6, 3), 3, channel_axis=3), path).kind == "wrong channels"


def test_twenty_channel_volume_fails_naming_the_file(tmp_path, imagefile_nifti):
    path = imagefile_nifti(tmp_path / "many.nii.gz", np.zeros((4, 4, 3, 20), dtype=np.float32))
    error = _error(_exact((4, 4, 3), 1, channel_axis=-1), path)
    assert str(error).startswith(f"{path}: 20 channels") and "--in_channels 20" in str(error)
    without_axis = _error(_exact((4, 4, 3), 1), path)
    assert without_axis.kind == "4D" and str(path) in str(without_axis)


def test_single_timepoint_4d_nifti_is_a_plain_volume(tmp_path, imagefile_nifti):
    volume = np.random.default_rng(1).normal(size=(6, 5, 4, 1)).astype(np.float32)
    path = imagefile_nifti(tmp_path / "one.nii.gz", volume)
    image = _exact((6, 5, 4), 1)({"image": str(path)})["image"]
    assert torch.allclose(image[0], torch.as_tensor(volume[..., 0]))


def test_png_alpha_is_dropped_only_as_alpha(tmp_path, imagefile_png):
    rgb = np.random.default_rng(2).integers(0, 256, size=(6, 5, 3)).astype(np.uint8)
    rgba = np.concatenate([rgb, np.full((6, 5, 1), 7, dtype=np.uint8)], axis=-1)
    path = imagefile_png(tmp_path / "rgba.png", rgba)
    image = _exact((5, 6), 3)({"image": str(path)})["image"]
    assert torch.equal(image, torch.as_tensor(rgb, dtype=torch.float32).permute(2, 1, 0))

    gray = rgb[..., 0]
    path = imagefile_png(tmp_path / "la.png", gray, mode="LA")
    image = _exact((5, 6), 1)({"image": str(path)})["image"]
    assert torch.equal(image[0], torch.as_tensor(gray, dtype=torch.float32).T)


def test_rgb_dicom_reads_samples_as_channels(tmp_path):
    rgb = np.random.default_rng(3).integers(0, 256, size=(6, 5, 3)).astype(np.uint8)
    path = write_rgb_dicom(tmp_path / "photo.dcm", rgb)
    image = _exact((5, 6), 3)({"image": str(path)})["image"]
    assert torch.equal(image, torch.as_tensor(rgb, dtype=torch.float32).permute(2, 1, 0))
    gray = _exact((5, 6), 1)({"image": str(path)})["image"]
    assert torch.allclose(gray[0], torch.as_tensor(rgb, dtype=torch.float32).mean(-1).T)


def test_mismatch_error_says_which_flag(tmp_path, imagefile_nifti):
    path = imagefile_nifti(tmp_path / "ct.nii.gz", np.zeros((33, 41, 25), dtype=np.float32))
    error = _error(build_image_transforms([64, 64], 1), path)
    assert "expected a 2D image (channel + 2 spatial axes), got shape (1, 33, 41, 25)" in str(error)
    assert "--spatial_dims 3" in str(error) and "--image_size" in str(error)


def test_image_size_of_the_wrong_length_says_how_to_fix():
    with pytest.raises(ValueError, match=r'spatial_dims is 3: give --image_size 3 entries, e.g. "\[64,64,64\]"'):
        build_image_transforms([64, 64], 1, spatial_dims=3)


# ------------------------------------------------------------------------------- one file per sequence (BraTS-like)
@pytest.fixture
def sequence_manifest(tmp_path, imagefile_nifti, manifest_write_csv) -> Path:
    """Two cases, each with T1 (the image column), T2 and FLAIR files; each sequence's voxels hold its index."""
    rows = []
    for case in range(2):
        files = {
            name: imagefile_nifti(tmp_path / f"case{case}" / f"{name}.nii.gz", np.full((6, 5, 4), k, np.float32))
            for k, name in enumerate(("t1", "t2", "flair"))
        }
        rows.append(
            {
                "id": f"case{case}",
                "image": str(files["t1"]),
                "label": "glioma" if case else "normal",
                "t2": str(files["t2"].relative_to(tmp_path)),
                "flair": str(files["flair"]),
            }
        )
    return manifest_write_csv(tmp_path / "brats.csv", rows)


def test_sequence_columns_stack_as_channels_in_order(sequence_manifest):
    from monai.data import DataLoader, Dataset

    from alr_monai.data.manifest import load_manifest

    manifest = load_manifest(sequence_manifest, sequences=["image", "t2", "flair"])
    items = manifest.items()
    assert items[0]["image"] == [
        str(sequence_manifest.parent / "case0" / f"{name}.nii.gz") for name in ("t1", "t2", "flair")
    ]
    batch = next(iter(DataLoader(Dataset(items, _exact((6, 5, 4), 3)), batch_size=2)))
    assert batch["image"].shape == (2, 3, 6, 5, 4)
    assert batch["image"].mean(dim=(0, 2, 3, 4)).tolist() == [0.0, 1.0, 2.0]
    assert [r["image"] for r in manifest.records] == [i["image"][0] for i in items]  # the image column is kept


def test_sequence_problems_name_row_and_column(sequence_manifest, tmp_path):
    from alr_monai.data.manifest import ManifestError, load_manifest

    with pytest.raises(ManifestError, match="sequences names column 't1c', which the manifest lacks"):
        load_manifest(sequence_manifest, sequences=["image", "t1c"])
    (tmp_path / "case1" / "flair.nii.gz").unlink()
    with pytest.raises(ManifestError) as excinfo:
        load_manifest(sequence_manifest, sequences=["image", "t2", "flair"])
    assert excinfo.value.problems == [
        f"{sequence_manifest} row 3: column 'flair': image file not found: {tmp_path / 'case1' / 'flair.nii.gz'}"
    ]


def test_decode_check_names_the_bad_sequence_file(sequence_manifest, tmp_path):
    from alr_monai.data.decode_check import check_images
    from alr_monai.data.manifest import load_manifest

    t2 = tmp_path / "case1" / "t2.nii.gz"
    t2.write_bytes(t2.read_bytes()[:-30])
    manifest = load_manifest(sequence_manifest, sequences=["image", "t2", "flair"], check_images=False)
    bad = check_images(manifest, _exact((6, 5, 4), 3), progress=False)
    assert [(b.id, b.image) for b in bad] == [("case1", str(t2))]


def test_bundle_overlay_reads_sequences(sequence_manifest, tmp_path):
    from monai.bundle import ConfigWorkflow

    from alr_monai.workflow import bundle_file

    workflow = ConfigWorkflow(
        config_file=[str(bundle_file("train.json")), str(bundle_file("train_manifest.json"))],
        workflow_type="train",
        logging_file=False,
        output_dir=str(tmp_path / "run"),
        manifest_path=str(sequence_manifest),
        sequences=["image", "t2", "flair"],
        spatial_dims=3,
        in_channels=3,
        image_size=[6, 5, 4],
    )
    workflow.parser.parse()
    manifest = workflow.parser.get_parsed_content("manifest")  # every row decoded with 3 channels
    assert [len(r["images"]) for r in manifest.records] == [3, 3]
    network = workflow.parser.get_parsed_content("network")
    assert isinstance(network.peers[0].conv1, torch.nn.Conv3d) and network.peers[0].conv1.in_channels == 3
