"""The round's query sheet (relabel/queries/round_<k>.html) in a real headless Chromium driven by Playwright.

The browser is Debian's ``chromium`` package (``/usr/bin/chromium``; ``make install`` installs it), never one that
Playwright downloads. Without it, or without the ``playwright`` package, these tests fail and say what to install.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from alr_monai import cli
from alr_monai.networks import PeerEnsemble
from alr_monai.relabel import QUERY_COLUMNS, RelabelDriver, RoundOutcome, RoundState, read_answers
from alr_monai.relabel import driver as driver_module
from alr_monai.relabel.query_page import Picture, render_picture, write_query_page
from alr_monai.utils import read_csv
from alr_monai.workflow import preset_files

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# a comment with everything a CSV or an HTML page can choke on
COMMENT = 'lobed nucleus, "looks like" <b>neutrophil</b> & co'


# ----------------------------------------------------------------------------------------------- the browser
@pytest.fixture(scope="module")
def browser() -> Iterator:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "Playwright for Python is not installed: run `.venv/bin/pip install -e '.[test]'` (or `pip install "
            "playwright`). Do not run `playwright install`: the test uses Debian's Chromium at /usr/bin/chromium.",
            pytrace=False,
        )
    if not CHROMIUM.is_file():
        pytest.fail(
            f"{CHROMIUM} not found: install Debian's Chromium with `apt-get update && apt-get install -y "
            "--no-install-recommends chromium` (`make install` does it when run as root).",
            pytrace=False,
        )
    with sync_playwright() as playwright:
        try:
            chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        except Exception as error:
            pytest.fail(f"{CHROMIUM} is installed but does not start under Playwright: {error}", pytrace=False)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser) -> Iterator:
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.errors = []  # JavaScript errors and dialogs: a page that works raises neither
    page.on("pageerror", lambda error: page.errors.append(f"page error: {error}"))
    page.on("console", lambda message: page.errors.append(message.text) if message.type == "error" else None)
    page.on("dialog", lambda dialog: (page.errors.append(f"dialog: {dialog.message}"), dialog.dismiss()))
    yield page
    context.close()


# ----------------------------------------------------------------------------------------------- a tiny run
@pytest.fixture(scope="module")
def waiting_run(tmp_path_factory, write_tiny_bloodmnist) -> Path:
    """Phase 1 on 64 BloodMNIST images, then `alr query`: round 1 (4 queries) waits for the expert."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions on a shared 2-core machine
    try:
        folder = write_tiny_bloodmnist(tmp_path_factory.mktemp("query_page_data"), {"train": 8, "val": 3, "test": 3})
        preset = folder / "tiny.json"
        smoke = json.loads(Path(preset_files("smoke")[0]).read_text())
        preset.write_text(json.dumps({**smoke, "network_factory#block_inplanes": [4, 8, 8, 8]}))
        run_dir = tmp_path_factory.mktemp("query_page_run") / "run"
        train = ["train", "--preset", str(preset), "--output_dir", str(run_dir), "--dataset_dir", str(folder)]
        cli.main([*train, "--max_epochs", "2", "--batch_size", "32"])
        relabel = ["--relabel#round_budget", "4", "--relabel#num_rounds", "1", "--relabel#recalibration_epochs", "1"]
        cli.main(["query", "--run_dir", str(run_dir), *relabel])
    finally:
        torch.set_num_threads(previous)
    return run_dir


def test_expert_answers_round_1_in_the_browser_and_alr_answer_applies_the_saved_file(
    waiting_run, page, tmp_path, capsys
):
    relabel_dir = waiting_run / "relabel"
    sheet = relabel_dir / "queries" / "round_1.html"
    header, query = read_csv(relabel_dir / "queries" / "round_1.csv")
    assert sheet.is_file(), "the round wrote no query sheet beside its query CSV"
    state = RoundState.load(relabel_dir / "state.json")
    assert state.pending_round == 1 and len(query) == 4
    names = state.class_names

    page.goto(sheet.as_uri())
    cards = page.locator("article.sample")
    assert cards.count() == 4
    for position, row in enumerate(query):
        card = cards.nth(position)
        assert card.locator(".sid").inner_text() == row["id"]
        assert card.locator(".tag.given").inner_text() == row["given_label"]
        assert row["predicted_label"] in card.locator("dl.facts").inner_text()
        # every queried image and example is decoded and drawn enlarged (28 px -> 252 px, nearest neighbour)
        image = card.locator(".imagecol img")
        assert image.evaluate("img => img.complete && img.naturalWidth") == 28
        assert image.evaluate("img => img.getBoundingClientRect().width") >= 200
        assert image.evaluate("img => getComputedStyle(img).imageRendering") == "pixelated"
        assert card.locator(".thumbs img").count() >= 1
        assert card.locator(".thumbs img").first.evaluate("img => img.complete && img.naturalWidth") == 28
        assert card.locator("button.choice").count() == len(names) + 2
    assert "current" in (cards.first.get_attribute("class") or "")

    # By keyboard: a class by its digit on sample 1 (one the given label is not), exclude 2, skip 3; 4 untouched.
    relabelled, excluded, skipped, untouched = (row["id"] for row in query)
    new_label = (names.index(query[0]["given_label"]) + 1) % len(names)
    for key in (str(new_label + 1), "x", "s"):
        page.keyboard.press(key)
    assert "current" in (cards.nth(3).get_attribute("class") or ""), "each answer moves on to the next sample"
    page.keyboard.press("k")
    assert "current" in (cards.nth(2).get_attribute("class") or "")
    page.keyboard.press("j")
    assert cards.nth(0).locator(".status").inner_text() == f"Relabel: {query[0]['given_label']} → {names[new_label]}"
    assert cards.nth(1).locator(".status").inner_text() == "Excluded from training"
    assert cards.nth(2).locator(".status").inner_text().startswith("Skipped")
    assert cards.nth(3).locator(".status").inner_text() == "Not answered"
    assert page.locator("#done").inner_text() == "3"
    comment = cards.nth(0).locator("input.comment")
    comment.click()
    comment.type(COMMENT)  # typed keys go to the comment, not to the shortcuts ("c", "s", "x", "k" are in it)
    comment.press("Enter")
    assert cards.nth(0).locator(".status").inner_text().startswith("Relabel"), "typing a comment changed the answer"
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(tmp_path / "query_page.png"), full_page=True)

    with page.expect_download() as info:
        page.locator("#save").click()
    download = info.value
    assert download.suggested_filename == "round_1.csv"
    saved = tmp_path / "downloads" / download.suggested_filename
    download.save_as(saved)
    assert page.errors == []

    # The saved file is the query file with expert_label and comment filled, nothing else changed.
    saved_header, saved_rows = read_csv(saved)
    assert saved_header == header == QUERY_COLUMNS
    answers = {
        relabelled: (names[new_label], COMMENT),
        excluded: ("exclude", ""),
        skipped: ("", ""),
        untouched: ("", ""),
    }
    for row, original in zip(saved_rows, query, strict=True):
        assert {k: v for k, v in row.items() if k not in ("expert_label", "comment")} == {
            k: v for k, v in original.items() if k not in ("expert_label", "comment")
        }
        assert (row["expert_label"], row["comment"]) == answers[row["id"]]

    # `alr answer` takes the downloaded file as it is.
    cli.main(["answer", str(saved), "--run_dir", str(waiting_run)])
    assert "round 1: applied 2 answers" in capsys.readouterr().out
    state = RoundState.load(relabel_dir / "state.json")
    assert state.round == 1 and state.pending_round is None
    entry = state.history[0]
    assert (entry["labels_spent"], entry["labels_changed"], entry["excluded"], entry["skipped"]) == (2, 1, 1, 2)
    position = {sample_id: i for i, sample_id in enumerate(state.ids)}
    assert state.current_labels[position[relabelled]] == new_label
    assert state.current_labels[position[excluded]] == -1
    assert state.source[position[relabelled]] == "expert" and state.source[position[excluded]] == "excluded"
    for sample_id in (skipped, untouched):
        assert state.current_labels[position[sample_id]] == state.given_labels[position[sample_id]]
        assert position[sample_id] in state.pool_indices()

    audit_header, audit = read_csv(relabel_dir / "audit.csv")
    by_id = {row["id"]: row for row in audit}
    assert (by_id[relabelled]["old_label"], by_id[relabelled]["new_label"]) == (
        query[0]["given_label"],
        names[new_label],
    )
    assert (by_id[excluded]["old_label"], by_id[excluded]["new_label"]) == (query[1]["given_label"], "excluded")
    assert {by_id[i]["round"] for i in (relabelled, excluded)} == {"1"}
    assert not {skipped, untouched} & set(by_id), "a skipped sample is not an answer"
    if "comment" in audit_header:  # the audit carries the expert's comment (issue 14, item 2)
        assert by_id[relabelled]["comment"] == COMMENT


# ------------------------------------------------------------------------------ escaping, shapes, placeholders
HOSTILE = '</script><img src=x onerror="alert(1)">'


def test_hostile_ids_stay_text_odd_images_show_their_reason_and_the_csv_reads_back(page, tmp_path):
    names = ["normal", "immature_granulocytes", "tumour <b>"]
    rows = [
        {"id": f"P1/{HOSTILE}", "given_label": 0, "predicted_label": 2, "predicted_probability": 0.91, "score": 1.5},
        {"id": 'a,"b"', "given_label": "tumour <b>", "predicted_label": "normal", "predicted_probability": "0.6"},
        {"id": "volume", "given_label": 1, "predicted_label": 1, "predicted_probability": 0.55, "score": 0.2},
        {"id": "vector", "given_label": 2, "predicted_label": 0, "predicted_probability": 0.5, "score": 0.1},
        {"id": "missing", "given_label": 0, "predicted_label": 1, "predicted_probability": 0.5, "score": 0.1},
    ]
    patients, files = ["P<1>", "P<1>", "", "P2", "P2"], ["a.dcm", "", "v.nii.gz", "", "m.dcm"]
    for row, patient, image in zip(rows, patients, files, strict=True):
        row.update({"patient_id": patient, "image": image, "expert_label": "", "comment": ""})
    images = [
        torch.rand(3, 28, 28),
        np.arange(12 * 10, dtype=np.float32).reshape(12, 10),
        torch.rand(1, 9, 10, 11),
        torch.rand(4),  # not an image at all
        FileNotFoundError(f"m.dcm {HOSTILE}"),
    ]
    examples = {0: [torch.rand(1, 28, 28)] * 3, 1: [torch.rand(1, 5, 6, 7)], 2: []}
    path = write_query_page(
        tmp_path / "round_3.html", rows, images, names, examples, round_index=3, answer_command=f"alr answer {HOSTILE}"
    )
    text = path.read_text(encoding="utf-8")
    assert HOSTILE not in text and "http://" not in text and "https://" not in text, "no markup, no network"
    assert text.count("<script") == 3, "only the page's own scripts (data, pictures, code)"

    page.goto(path.as_uri())
    cards = page.locator("article.sample")
    assert cards.count() == 5
    assert cards.nth(0).locator(".sid").inner_text() == f"P1/{HOSTILE}"
    assert page.locator("img[src='x']").count() == 0
    assert page.locator("h2.patient .pid").all_inner_texts() == ["P<1>", "P2"]
    assert page.locator("h2.patient").nth(1).inner_text() == "No patient id"
    # scores with even precision (four decimals, as the query CSV), explained in the tooltip (issue 25 item 9)
    assert page.locator("span.score").all_inner_texts() == ["1.5000", "0.2000", "0.1000", "0.1000"]
    assert "higher = more worth a look" in (page.locator("span.score").first.get_attribute("title") or "")
    assert cards.nth(2).locator(".imagecol figcaption").all_inner_texts() == ["axial", "coronal", "sagittal"]
    assert "is not a channel-first 2D or 3D image" in cards.nth(3).locator(".placeholder").inner_text()
    assert f"FileNotFoundError: m.dcm {HOSTILE}" in cards.nth(4).locator(".placeholder").inner_text()
    assert cards.nth(1).locator(".tag.given").inner_text() == "tumour <b>"
    assert "no trusted example" in cards.nth(1).inner_text()

    # Digits beyond the classes do nothing; u clears; arrows move; a click answers without moving on.
    page.keyboard.press("9")
    assert cards.nth(0).locator(".status").inner_text() == "Not answered"
    page.keyboard.press("3")
    page.keyboard.press("ArrowUp")
    page.keyboard.press("u")
    assert cards.nth(0).locator(".status").inner_text() == "Not answered"
    for key in ("j", "2", "k", "c"):  # class 2 for sample 2, back to it, into its comment
        page.keyboard.press(key)
    page.keyboard.type("x, s and k are text here")
    page.keyboard.press("Escape")
    cards.nth(2).locator("button.choice.exclude").click()
    assert "current" in (cards.nth(2).get_attribute("class") or "")
    page.locator("#reader").fill("Dr. Ada")
    with page.expect_download() as info:
        page.keyboard.press("Control+s")
    saved = tmp_path / "answers.csv"
    info.value.save_as(saved)
    assert info.value.suggested_filename == "round_3.csv"
    page.reload()  # a closed or reloaded tab keeps the answers (kept in the browser's storage)
    assert page.locator("#done").inner_text() == "2" and "2 answers restored" in page.locator("#saved").inner_text()
    assert page.locator("article.sample").nth(1).locator("input.comment").input_value() == "x, s and k are text here"
    assert page.errors == []

    header, saved_rows = read_csv(saved)
    assert header == [*QUERY_COLUMNS, "reader"], "a typed reader name adds a reader column"
    assert [row["id"] for row in saved_rows] == [row["id"] for row in rows]
    assert [row["given_label"] for row in saved_rows] == ["normal", "tumour <b>", "immature_granulocytes"] + [
        "tumour <b>",
        "normal",
    ]
    assert saved_rows[1]["comment"] == "x, s and k are text here"
    ids = [row["id"] for row in rows]
    answers = {a.id: a for a in read_answers(saved, names, ids, ids)}
    assert answers['a,"b"'].label == 1 and answers["volume"].excluded and answers[ids[0]].skipped
    assert answers['a,"b"'].reader == "Dr. Ada"


def test_render_picture_shapes_orientation_and_reasons():
    gray = np.arange(6, dtype=np.float32).reshape(2, 3)  # 2 rows, 3 columns
    (view,) = render_picture(gray).views
    assert (view.width, view.height) == (3, 2)
    (view,) = render_picture(torch.as_tensor(gray)[None], x_first=True).views  # (x, y): 2 columns, 3 rows
    assert (view.width, view.height) == (2, 3)
    rgb = render_picture(torch.rand(3, 28, 28))
    assert len(rgb.views) == 1 and rgb.problem == ""
    volume = render_picture(torch.rand(1, 4, 5, 6))  # (C, D, H, W)
    assert [(v.caption, v.width, v.height) for v in volume.views] == [
        ("axial", 6, 5),
        ("coronal", 6, 4),
        ("sagittal", 5, 4),
    ]
    assert len(render_picture(torch.rand(1, 1, 8, 8)).views) == 1, "a one-slice volume is a 2D image"
    assert render_picture(torch.rand(2, 8, 8)).note == "channel 1 of 2 shown"
    assert "constant" in render_picture(np.ones((4, 4))).note
    assert render_picture(np.full((4, 4), np.nan)).problem.endswith("no finite pixel value")
    assert render_picture(torch.rand(7)).problem.startswith("cannot show this image")
    assert render_picture(None).problem == "no image"
    assert render_picture("decoder missing").problem == "decoder missing"
    big = render_picture(np.random.default_rng(0).random((1, 1024, 600)))
    assert (big.views[0].width, big.views[0].height) == (300, 512), "large images are shrunk to 512 px"
    assert render_picture(Picture(problem="kept")) == Picture(problem="kept")


# ------------------------------------------------------------------------------------------------ the driver
def _driver(tmp_path: Path) -> RelabelDriver:
    torch.manual_seed(0)
    n, classes = 24, ["a", "b", "c"]
    truth = [i % 3 for i in range(n)]
    given = [(t + 1) % 3 if i % 4 == 0 else t for i, t in enumerate(truth)]
    # the "images" are feature vectors: the sheet must show why it cannot draw them, not fail
    items = [{"image": torch.randn(4), "label": given[i], "index": i} for i in range(n)]
    network = PeerEnsemble(lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), num_peers=2)
    return RelabelDriver(
        network,
        tmp_path / "run" / "relabel",
        classes,
        [f"s{i}" for i in range(n)],
        given,
        [i % 4 != 0 and i % 3 != 1 for i in range(n)],
        items,
        DataLoader([{**item, "label": truth[i]} for i, item in enumerate(items)], batch_size=8),
        round_budget=3,
        num_rounds=1,
        mode="interactive",
        batch_size=8,
        device="cpu",
    )


def test_the_driver_writes_the_sheet_and_a_failing_sheet_never_stops_the_round(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger=driver_module.__name__)
    driver = _driver(tmp_path / "ok")
    driver.open()
    assert driver.advance_to(1) == RoundOutcome.WAITING
    sheet = driver.query_path(1).with_suffix(".html")
    text = sheet.read_text(encoding="utf-8")
    assert text.count('class="placeholder"') >= 3 and "is not a channel-first 2D or 3D image" in text
    assert f"wrote the query sheet {sheet}" in caplog.text
    message = driver.waiting_message(1)
    assert (
        message.index(str(sheet))
        < message.index("alr answer <downloaded or filled file>")
        < message.index("Resume with")
    )
    sheet.unlink()  # as a crash right after the state was saved, or a round queried by an older version, leaves it
    assert driver.advance_to(1) == RoundOutcome.WAITING and sheet.read_text(encoding="utf-8") == text

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("alr_monai.relabel.query_page.write_query_page", broken)
    caplog.clear()
    driver = _driver(tmp_path / "broken")
    driver.open()
    assert driver.advance_to(1) == RoundOutcome.WAITING, "the CSV alone still asks the round"
    assert driver.query_path(1).is_file() and not driver.query_path(1).with_suffix(".html").exists()
    warning = [r for r in caplog.records if r.levelno == logging.WARNING and "query sheet" in r.getMessage()]
    assert warning and "OSError: disk full" in warning[0].getMessage()
    assert str(driver.query_path(1)) in driver.waiting_message(1) and ".html" not in driver.waiting_message(1)


@pytest.mark.parametrize("suffix", [".png", ".dcm"])
def test_manifest_images_show_upright(tmp_path, suffix, imagefile_png, imagefile_dicom):
    """MONAI's file readers give (x, y) = (columns, rows): with x_first the sheet shows the file as it is."""
    from PIL import Image

    from alr_monai.data.transforms import build_image_transforms

    pixels = np.zeros((12, 20), dtype=np.uint8)  # 12 rows, 20 columns, a bar near the top and a dot lower left
    pixels[2:5, 3:15], pixels[8, 1] = 255, 128
    path = tmp_path / f"image{suffix}"
    (imagefile_png if suffix == ".png" else imagefile_dicom)(
        path, pixels.astype(np.int16 if suffix == ".dcm" else np.uint8)
    )
    item = build_image_transforms([20, 12], 1)({"image": str(path), "label": 0, "index": 0})
    (view,) = render_picture(item["image"], x_first=True).views
    shown = np.asarray(Image.open(io.BytesIO(view.png)))
    assert shown.shape == (12, 20) and np.array_equal(shown > 200, pixels > 200)
