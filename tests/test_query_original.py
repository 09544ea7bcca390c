"""The query sheet's original image: the queried file at its own resolution, with the run's window, beside the
network input; a volume with a slice slider; brightness / contrast controls; MedMNIST with a note instead.

The browser tests use the Playwright fixtures of test_query_page.py (Debian's /usr/bin/chromium).
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import test_query_page
import torch
from dicom_series_helpers import write_series, write_slice
from monai.data import Dataset
from torch import nn
from torch.utils.data import DataLoader

from alr_monai.data.transforms import build_array_transforms, build_image_transforms, original_image_transforms
from alr_monai.networks import PeerEnsemble
from alr_monai.relabel import RelabelDriver, RoundOutcome
from alr_monai.relabel.query_page import Picture, render_original, slices_per_volume, write_query_page

# the Playwright fixtures (Debian's Chromium) of the query page's own tests
browser = test_query_page.browser
page = test_query_page.page
WINDOW = {"window": [40, 400]}  # HU -160 .. 240


def _shown(view) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(view.png)))


def _thirds(rows: int = 240, columns: int = 320) -> np.ndarray:
    """Stored values whose HU (intercept -1024) are -1000 (air), 40 (the window's centre), 1000 (bone), left to
    right."""
    hu = np.full((rows, columns), -1000.0)
    hu[:, columns // 3 : 2 * columns // 3] = 40.0
    hu[:, 2 * columns // 3 :] = 1000.0
    return hu + 1024.0


def _original(path: Path, spatial_dims: int = 2, intensity=None) -> Picture:
    chain = build_image_transforms([16] * spatial_dims, 1, spatial_dims=spatial_dims, intensity=intensity or WINDOW)
    transform, scaled = original_image_transforms(chain)
    return render_original(transform({"image": str(path)})["image"], scaled=scaled)


# ------------------------------------------------------------------------------------------------ the pictures
def test_original_is_the_file_at_its_resolution_with_the_window_and_monochrome1_inverted(tmp_path):
    normal = _original(write_slice(tmp_path / "m2.dcm", _thirds(), intercept=-1024))
    (view,) = normal.views
    assert (view.width, view.height) == (320, 240), "columns x rows of the file, not the 16x16 network input"
    assert "320x240 px, full resolution" in normal.note
    shown = _shown(view)
    assert shown.shape == (240, 320), "upright: rows are rows"
    # the training window [-160, 240] HU: air clipped black, the centre mid-gray, bone clipped white
    assert shown[:, :100].max() == 0 and shown[:, -100:].min() == 255
    assert abs(int(np.median(shown[:, 120:200])) - 128) <= 1

    inverted = _original(write_slice(tmp_path / "m1.dcm", _thirds(), intercept=-1024, photometric="MONOCHROME1"))
    shown = _shown(inverted.views[0])
    # MONOCHROME1 as the data layer reads it (min + max - value): air becomes 1000 HU, bone -1000, 40 HU -40
    assert shown[:, :100].min() == 255 and shown[:, -100:].max() == 0
    assert abs(int(np.median(shown[:, 120:200])) - round(255 * 120 / 400)) <= 1

    # soft tissue only (0 and 100 HU, inside the window): shown as the window maps it, not stretched to black/white
    soft = np.full((20, 30), 1024.0)
    soft[:, 15:] += 100.0
    shown = _shown(_original(write_slice(tmp_path / "soft.dcm", soft, intercept=-1024)).views[0])
    assert shown[0, 0] == round(255 * 160 / 400) and shown[0, -1] == round(255 * 260 / 400)

    # minmax: the whole range shown; a raw (unscaled) chain is min-max scaled for the page
    minmax = _shown(_original(tmp_path / "m2.dcm", intensity="minmax").views[0])
    assert minmax[:, :100].max() == 0 and minmax[:, -100:].min() == 255 and 125 <= np.median(minmax[:, 120:200]) <= 140


def test_large_images_are_capped_and_volumes_keep_at_most_max_slices():
    wide = render_original(np.random.default_rng(0).random((1, 2048, 300)), scaled=True)
    (view,) = wide.views
    assert (view.width, view.height) == (1024, 150) and "downscaled from 2048x300" in wide.note
    assert view.mime == "image/jpeg", "a noisy large image is stored as JPEG when its PNG is over budget"

    volume = np.zeros((1, 12, 10, 100))
    volume[0, :, 0, :] = np.arange(100) / 99.0  # each slice's first row carries its index
    picture = render_original(volume, scaled=True)
    assert len(picture.views) == 50 and picture.views[0].caption == "slice 1 / 100"
    assert (
        picture.views[1].caption == "slice 3 / 100"
        and "1 in 2 of 100 slices kept (50 shown, at most 64)" in picture.note
    )
    assert all((v.width, v.height) == (12, 10) for v in picture.views)
    assert _shown(picture.views[10])[0, 0] == round(255 * 20 / 99)

    # a page's volumes share a slice budget: 100 queried volumes keep 10 slices each, never fewer than 8
    assert [slices_per_volume(n) for n in (1, 10, 100, 1000)] == [64, 64, 10, 8]
    assert len(render_original(volume, scaled=True, max_slices=slices_per_volume(100)).views) == 10

    few = render_original(np.zeros((1, 8, 8, 5)), scaled=True)
    assert len(few.views) == 5 and "kept" not in few.note
    assert render_original("could not load x.dcm").problem == "could not load x.dcm"
    assert "cannot show the original image" in render_original(np.zeros((2, 3, 4, 5, 6))).problem


def test_medmnist_arrays_have_no_original_chain():
    assert original_image_transforms(build_array_transforms(3)) is None
    assert original_image_transforms(build_image_transforms([16, 16], 1)) is not None


# ------------------------------------------------------------------------------------------------ the driver
def _dicom_driver(tmp_path: Path, n: int = 9) -> RelabelDriver:
    torch.manual_seed(0)
    classes = ["a", "b", "c"]
    paths = [
        write_slice(tmp_path / "data" / f"case{i}.dcm", _thirds(), intercept=-1024, patient_id=f"P{i}")
        for i in range(n)
    ]
    chain = build_image_transforms([16, 16], 1, intensity=WINDOW)
    items = [{"image": str(p), "label": i % 3, "index": i, "id": f"s{i}"} for i, p in enumerate(paths)]
    network = PeerEnsemble(lambda: nn.Sequential(nn.Flatten(), nn.Linear(256, 3)), num_peers=2)
    return RelabelDriver(
        network,
        tmp_path / "run" / "relabel",
        classes,
        [item["id"] for item in items],
        [item["label"] for item in items],
        [i % 3 != 0 for i in range(n)],
        Dataset(items, transform=chain),
        DataLoader(Dataset(items, transform=chain), batch_size=4),
        round_budget=3,
        num_rounds=1,
        mode="interactive",
        batch_size=4,
        device="cpu",
        image_paths=[str(p) for p in paths],
    )


def test_the_driver_puts_the_original_dicom_on_the_page_and_the_browser_shows_it_at_its_resolution(page, tmp_path):
    driver = _dicom_driver(tmp_path)
    driver.open()
    assert driver.advance_to(1) == RoundOutcome.WAITING
    sheet = driver.query_path(1).with_suffix(".html")
    page.goto(sheet.as_uri())
    originals = page.locator("article.sample img.orig")
    assert originals.count() == 3
    for i in range(3):
        size = originals.nth(i).evaluate("img => [img.naturalWidth, img.naturalHeight, img.width, img.height]")
        assert size == [320, 240, 320, 240], "the original at its own resolution, shown 1:1"
    network_input = page.locator("article.sample .imagecol img").first
    assert network_input.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [16, 16]
    assert "320x240 px, full resolution" in page.locator(".origrow .onote").first.inner_text()
    # the page's picture is the windowed file: air black, bone white (decoded by the browser, read back by canvas)
    row = originals.first.evaluate(
        """img => { const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = 1;
        const g = c.getContext('2d'); g.drawImage(img, 0, -120); const d = g.getImageData(0, 0, c.width, 1).data;
        return [d[4 * 10], d[4 * 160], d[4 * 310]]; }"""
    )
    assert row[0] == 0 and abs(row[1] - 128) <= 1 and row[2] == 255
    assert not page.errors


def test_medmnist_driver_pages_say_there_is_no_original_file(tmp_path):
    n = 6
    items = [{"image": torch.zeros(3, 4, 4), "label": i % 3, "index": i} for i in range(n)]
    driver = RelabelDriver(
        PeerEnsemble(lambda: nn.Sequential(nn.Flatten(), nn.Linear(48, 3)), num_peers=2),
        tmp_path / "relabel",
        ["a", "b", "c"],
        [f"s{i}" for i in range(n)],
        [i % 3 for i in range(n)],
        [True] * n,
        Dataset(items, transform=build_array_transforms(3)),
        DataLoader(items, batch_size=4),
        mode="interactive",
        device="cpu",
    )
    (note,) = driver._original_pictures([0])
    assert not note.views and not note.problem and "no original file" in note.note
    path = write_query_page(
        tmp_path / "p.html", [{"id": "s0", "given_label": 0}], [np.zeros((3, 4, 4))], ["a", "b", "c"], originals=[note]
    )
    text = path.read_text(encoding="utf-8")
    assert 'class="origrow onlynote"' in text and "no original file" in text and 'img class="orig' not in text


# ------------------------------------------------------------------------------------------------ slider, window
def _volume_page(tmp_path: Path) -> Path:
    rows, columns, slices = 40, 30, 6
    volume = np.full((rows, columns, slices), 0.0)
    for k in range(slices):
        volume[5 * k : 5 * k + 5, :, k] = 2000.0  # slice k is bright in rows 5k..5k+4
    write_series(tmp_path / "series", volume, intercept=-1024)
    picture = _original(tmp_path / "series", spatial_dims=3, intensity="minmax")
    flat = write_slice(tmp_path / "flat.dcm", _thirds(), intercept=-1024)
    rows_ = [
        {"id": "vol", "given_label": 0, "predicted_label": 1, "image": str(tmp_path / "series")},
        {"id": "flat", "given_label": 1, "predicted_label": 1, "image": str(flat)},
    ]
    images = [np.zeros((1, 8, 8, 8)), np.zeros((1, 8, 8))]
    return write_query_page(
        tmp_path / "round_1.html", rows_, images, ["a", "b"], originals=[picture, _original(flat)], round_index=1
    )


def _bright_rows(data_uri: str) -> list[int]:
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(data_uri.split(",", 1)[1]))))
    return sorted(set(np.nonzero(pixels > 200)[0].tolist()))


def test_the_slice_slider_and_keys_change_the_shown_slice(page, tmp_path):
    page.goto(_volume_page(tmp_path).as_uri())
    card = page.locator("article.sample").first
    image, slicer = card.locator("img.orig"), card.locator("input.slicer")
    assert slicer.get_attribute("max") == "5" and slicer.input_value() == "3"
    assert _bright_rows(image.get_attribute("src")) == list(range(15, 20)), "the middle slice first"
    assert card.locator(".slicetext").inner_text() == "slice 4 / 6"
    slicer.fill("0")  # dragging the slider
    assert _bright_rows(image.get_attribute("src")) == list(range(0, 5))
    assert card.locator(".slicetext").inner_text() == "slice 1 / 6"
    page.keyboard.press("Escape")
    page.keyboard.press("]")
    page.keyboard.press("]")
    assert slicer.input_value() == "2" and _bright_rows(image.get_attribute("src")) == list(range(10, 15))
    page.keyboard.press("[")
    assert card.locator(".slicetext").inner_text() == "slice 2 / 6"
    assert card.locator(".status").inner_text() == "Not answered", "slice keys answer nothing"
    assert not page.errors


def test_window_controls_change_the_rendering_and_leave_the_answer_keys_alone(page, tmp_path):
    page.goto(_volume_page(tmp_path).as_uri())
    card = page.locator("article.sample").nth(1)
    image = card.locator("img.orig")

    def mean_gray() -> float:
        from PIL import Image

        return float(np.asarray(Image.open(io.BytesIO(image.screenshot())).convert("L")).mean())

    before = mean_gray()
    assert image.evaluate("img => getComputedStyle(img).filter") in ("none", "brightness(1) contrast(1)")
    card.locator("input.bright").fill("250")
    brighter = mean_gray()
    assert brighter > before + 20, (before, brighter)
    assert "brightness(2.5)" in image.evaluate("img => getComputedStyle(img).filter")
    card.locator("input.contrast").fill("300")
    assert image.evaluate("img => getComputedStyle(img).filter") == "brightness(2.5) contrast(3)"
    # a focused slider keeps its arrows, every other key still answers the card
    card.locator("input.contrast").focus()
    page.keyboard.press("ArrowRight")
    assert card.locator("input.contrast").input_value() == "305"
    page.keyboard.press("1")
    assert card.locator(".status").inner_text() == "Relabel: b \u2192 a"
    page.keyboard.press("r")  # the last card stays current after its answer: r resets its window
    assert card.locator("input.bright").input_value() == "100" and abs(mean_gray() - before) < 1
    card.locator("button.wlpreset", has_text="Narrow").click()
    assert card.locator("input.contrast").input_value() == "200"
    assert not page.errors


def test_a_large_original_costs_jpeg_bytes_not_png_bytes():
    """A noisy 512x512 slice (CT is noisy) compresses badly as PNG; the JPEG stored instead is a fraction of it."""
    noisy = np.random.default_rng(0).normal(0.5, 0.1, (1, 512, 512)).clip(0, 1)
    (view,) = render_original(noisy, scaled=True).views
    assert view.mime == "image/jpeg" and (view.width, view.height) == (512, 512) and len(view.png) < 150_000
    (flat,) = render_original(np.zeros((1, 512, 512)), scaled=True).views
    assert flat.mime == "image/png", "a PNG within budget stays lossless"
