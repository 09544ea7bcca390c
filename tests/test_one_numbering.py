"""One class numbering for the expert (issue 25, item 1): the query page's keys and a number typed into the CSV's
``expert_label`` mean the same class, so answering a round with the page or with numbers in the CSV ends in the
same labels. Chromium is driven as in tests/test_query_page.py (Debian's /usr/bin/chromium, never a download).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from pathlib import Path

import pytest
import torch

from alr_monai import cli
from alr_monai.relabel import RoundState
from alr_monai.utils import read_csv
from alr_monai.workflow import preset_files

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


@pytest.fixture(scope="module")
def waiting_run(tmp_path_factory, write_tiny_bloodmnist) -> tuple[Path, str]:
    """Phase 1 on 64 BloodMNIST images, then `alr query`: round 1 (5 queries) waits; returns (run, console)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions on a shared 2-core machine
    try:
        folder = write_tiny_bloodmnist(tmp_path_factory.mktemp("numbering_data"), {"train": 8, "val": 3, "test": 3})
        preset = folder / "tiny.json"
        smoke = json.loads(Path(preset_files("smoke")[0]).read_text())
        preset.write_text(json.dumps({**smoke, "network_factory#block_inplanes": [4, 8, 8, 8]}))
        run_dir = tmp_path_factory.mktemp("numbering_run") / "run"
        train = ["train", "--preset", str(preset), "--output_dir", str(run_dir), "--dataset_dir", str(folder)]
        cli.main([*train, "--max_epochs", "2", "--batch_size", "32"])
        relabel = ["--relabel#round_budget", "5", "--relabel#num_rounds", "1", "--relabel#recalibration_epochs", "1"]
        console = io.StringIO()
        with contextlib.redirect_stdout(console):
            cli.main(["query", "--run_dir", str(run_dir), *relabel])
    finally:
        torch.set_num_threads(previous)
    return run_dir, console.getvalue()


def _copy(run_dir: Path, target: Path) -> Path:
    shutil.copytree(run_dir, target)
    return target


def _labels(run_dir: Path) -> dict[str, int]:
    state = RoundState.load(run_dir / "relabel" / "state.json")
    assert state.round == 1 and state.pending_round is None
    return dict(zip(state.ids, state.current_labels, strict=True))


def test_the_page_and_numbers_in_the_csv_end_in_the_same_labels(waiting_run, tmp_path, capsys):
    run_dir, console = waiting_run
    state = RoundState.load(run_dir / "relabel" / "state.json")
    names = state.class_names
    header, query = read_csv(run_dir / "relabel" / "queries" / "round_1.csv")
    assert len(query) == 5
    # the console of `alr query` gives the numbering the page and the CSV share, and the next command
    legend = ", ".join(f"{k + 1} = {name}" for k, name in enumerate(names))
    assert f"Class numbers (page keys and expert_label): {legend}" in console
    assert console.strip().splitlines()[-1].startswith("Next: alr answer <saved file> --run_dir")
    # the image column says where each .npz image is: npz:<split>_images[<position in that array of the file>]
    for row in query:
        assert row["image"] == f"npz:train_images[{row['id'].rpartition('_')[2]}]", row

    # The expert's choice per sample: the class numbers 3, 1, 8, 2 (keys 3, 1, 8, 2 on the page) and one exclusion.
    numbers = ["3", "1", str(len(names)), "2", "x"]

    # 1. With the page: press the keys.
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright for Python is not installed: run `.venv/bin/pip install -e '.[test]'`", pytrace=False)
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} not found: `apt-get install -y --no-install-recommends chromium`", pytrace=False)
    page_run = _copy(run_dir, tmp_path / "page_run")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(accept_downloads=True)
            page = context.new_page()
            page.goto((page_run / "relabel" / "queries" / "round_1.html").as_uri())
            for key in numbers:
                page.keyboard.press(key)
            with page.expect_download() as info:
                page.locator("#save").click()
            saved = tmp_path / "from_page.csv"
            info.value.save_as(saved)
        finally:
            browser.close()
    assert cli.main(["answer", str(saved), "--run_dir", str(page_run)]) is None
    assert "applied 5 answers" in capsys.readouterr().out

    # 2. Without a browser: the same numbers typed into expert_label of the query CSV.
    csv_run = _copy(run_dir, tmp_path / "csv_run")
    filled = tmp_path / "filled.csv"
    with open(filled, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        for row, number in zip(query, numbers, strict=True):
            writer.writerow({**row, "expert_label": "exclude" if number == "x" else number})
    cli.main(["answer", str(filled), "--run_dir", str(csv_run), "--dry_run"])
    dry = capsys.readouterr().out
    for row, number in zip(query, numbers, strict=True):  # "1 (basophil) -> 3 (erythroblast)"
        old = f"{names.index(row['given_label']) + 1} ({row['given_label']})"
        new = "excluded" if number == "x" else f"{number} ({names[int(number) - 1]})"
        assert f"{row['id']}: {old} -> {new}" in dry or old == new, dry
    cli.main(["answer", str(filled), "--run_dir", str(csv_run)])
    capsys.readouterr()

    by_page, by_csv = _labels(page_run), _labels(csv_run)
    assert by_page == by_csv
    for row, number in zip(query, numbers, strict=True):
        assert by_csv[row["id"]] == (-1 if number == "x" else int(number) - 1)


def test_the_query_csv_gives_scores_and_probabilities_with_even_precision_and_the_console_explains_them(waiting_run):
    run_dir, console = waiting_run
    _, query = read_csv(run_dir / "relabel" / "queries" / "round_1.csv")
    for row in query:
        for column in ("score", "predicted_probability"):
            assert len(row[column].partition(".")[2]) == 4, row  # four decimals in every row
    assert (
        "Query score (the score column): the entropy of the model's predicted class probabilities (0 = sure; "
        "ln C = no idea) (relabel#acquisition entropy); higher = more worth a look" in console
    )


def test_alr_issues_on_a_real_run_gives_the_models_view_and_knows_the_answers(waiting_run, tmp_path, capsys):
    run_dir = _copy(waiting_run[0], tmp_path / "run")
    _, query = read_csv(run_dir / "relabel" / "queries" / "round_1.csv")
    answers = tmp_path / "answers.csv"
    answers.write_text(f"id,expert_label\n{query[0]['id']},2\n{query[1]['id']},EXCLUDE\n")
    cli.main(["answer", str(answers), "--run_dir", str(run_dir), "--allow_empty"])
    cli.main(["issues", "--run_dir", str(run_dir), "--top", "3"])
    out = capsys.readouterr().out
    assert "1 answered by the expert and 1 excluded are ranked last" in out and "model says" in out
    _, rows = read_csv(run_dir / "label_issues.csv")
    names = RoundState.load(run_dir / "relabel" / "state.json").class_names
    for row in rows:
        assert row["suggested_label"] in names
        assert 0.0 <= float(row["label_quality"]) <= float(row["suggested_probability"]) <= 1.0
        if row["suggested_label"] == row["given_label"]:  # label quality is the probability of the given label
            assert row["label_quality"] == row["suggested_probability"]
    assert [(r["id"], r["status"], r["expert_label"]) for r in rows[-2:]] == [
        (query[0]["id"], "answered", names[1]),
        (query[1]["id"], "excluded", ""),
    ]
