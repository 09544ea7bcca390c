"""The ``alr`` command (fire): a thin layer over the bundle configs and the Python API.

    alr demo                                  phase 1 + 5 simulated rounds on the embedded data
    alr train --output_dir runs/x             phase 1 (co-teaching + VoG) on the embedded data
    alr train --manifest labels.csv ...       phase 1 on a DICOM/NIfTI/PNG manifest
    alr relabel --output_dir runs/x           phase 2, simulated rounds (oracle answers)
    alr query --run_dir runs/x                phase 2 with a person: run until the next query file is written
    alr answer FILE --run_dir runs/x          validate and apply an expert's answers
    alr status --run_dir runs/x               round, labels spent, what is waiting
    alr report --run_dir runs/x               write and print report.md
    alr benchmark --preset small              a benchmark matrix (configs/benchmarks), resumable
    alr manifest build ROOT --out m.csv       folder tree ROOT/<class>/<files> -> manifest
    alr manifest check m.csv                  validate a manifest, report every bad row

Any bundle key can be overridden as a flag, e.g. ``--max_epochs 5`` or ``--vog#mix_ratio 0.1``.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fire

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE_DIR = REPO_ROOT / "bundles" / "alr_bloodmnist"
PRESET_DIR = REPO_ROOT / "configs" / "presets"
RUN_CONFIG = "run_config.json"


def _bundle_file(name: str) -> str:
    path = BUNDLE_DIR / "configs" / name
    if not path.is_file():
        raise FileNotFoundError(
            f"bundle config {path} not found; alr needs the repository checkout (pip install -e .) for its bundles"
        )
    return str(path)


def _preset_files(presets: str | Sequence[str] | None) -> list[str]:
    if not presets:
        return []
    names = [presets] if isinstance(presets, str) else list(presets)
    files = []
    for name in names:
        path = Path(name) if name.endswith(".json") else PRESET_DIR / f"{name}.json"
        if not path.is_file():
            available = sorted(p.stem for p in PRESET_DIR.glob("*.json"))
            raise FileNotFoundError(f"preset {name!r} not found (looked for {path}); available: {available}")
        files.append(str(path))
    return files


_LITERALS = {"true": True, "false": False, "null": None, "none": None}


def _coerce(value: Any) -> Any:
    """Fire passes ``--flag false`` as the string "false"; bundle configs mean the JSON literal."""
    return _LITERALS.get(value.strip().lower(), value) if isinstance(value, str) else value


def run_workflow(config_files: Sequence[str], overrides: dict[str, Any]) -> Any:
    """Initialise, run and finalise a MONAI bundle workflow built from ``config_files`` plus ``overrides``."""
    from monai.bundle import ConfigWorkflow

    with warnings.catch_warnings():
        # MONAI warns on every config parse that configs run code; these are the project's own configs.
        warnings.filterwarnings("ignore", message=".*resolved to an importable callable.*")
        workflow = ConfigWorkflow(
            config_file=list(config_files),
            meta_file=_bundle_file("metadata.json"),
            logging_file=_bundle_file("logging.conf"),
            workflow_type="train",
            **{key: _coerce(value) for key, value in overrides.items()},
        )
        workflow.initialize()
        workflow.run()
        workflow.finalize()
    return workflow


def _phase1_files(presets, manifest) -> list[str]:
    files = [_bundle_file("train.json")]
    if manifest:
        files.append(_bundle_file("train_manifest.json"))
    return files + _preset_files(presets)


def _save_run_config(run_dir: Path, files: list[str], overrides: dict) -> None:
    from alr_monai.utils import atomic_write_json

    atomic_write_json(run_dir / RUN_CONFIG, {"config_files": files, "overrides": overrides})


def _load_run_config(run_dir: Path) -> tuple[list[str], dict]:
    path = run_dir / RUN_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `alr train --output_dir {run_dir}` (phase 1) first")
    saved = json.loads(path.read_text())
    return list(saved["config_files"]), dict(saved["overrides"])


def train(
    output_dir: str = "runs/alr", preset: str | Sequence[str] | None = None, manifest: str | None = None, **overrides
):
    """Phase 1: co-teaching with small-loss + VoG selection. Resumes if ``output_dir`` holds a checkpoint.

    Args:
        output_dir: the run folder (checkpoints, selection.csv, metrics.json, tensorboard/).
        preset: preset name(s) in configs/presets (paper_recipe, coteaching, ce, smoke) or .json paths.
        manifest: a manifest CSV (id,image,label[,patient_id,split]) to train on instead of the embedded data.
        **overrides: bundle keys, e.g. max_epochs=5 or "vog#mix_ratio"=0.1.
    """
    run_dir = Path(output_dir)
    files = _phase1_files(preset, manifest)
    overrides = {"output_dir": str(run_dir), **overrides}
    if manifest:
        overrides["manifest_path"] = str(Path(manifest).resolve())
    run_dir.mkdir(parents=True, exist_ok=True)
    _save_run_config(run_dir, files, overrides)
    started = time.time()
    run_workflow(files, overrides)
    from alr_monai.report import write_report

    print(f"phase 1 finished in {time.time() - started:.0f} s; outputs in {run_dir}", flush=True)
    print(write_report(run_dir).read_text(), flush=True)


def relabel(run_dir: str = "runs/alr", mode: str = "simulation", **overrides):
    """Phase 2: active relabel rounds after phase 1 in the same run folder.

    Args:
        run_dir: the phase-1 run folder.
        mode: "simulation" (oracle answers from the injected noise's truth) or "interactive" (stops at each
            query; fill the file, then rerun `alr query --run_dir RUN_DIR`).
        **overrides: e.g. "relabel#acquisition"="margin", "relabel#round_budget"=50, "relabel#num_rounds"=3.
    """
    run_path = Path(run_dir)
    files, saved = _load_run_config(run_path)
    merged = {
        **saved,
        "output_dir": str(run_path),  # the run folder given now, even if phase 1 ran under another path
        "relabel#mode": mode,
        "relabel#resume_command": f"alr query --run_dir {run_dir}",
        **overrides,
    }
    run_workflow(files + [_bundle_file("relabel.json")], merged)
    from alr_monai.report import write_report

    write_report(run_path)


def query(run_dir: str = "runs/alr", **overrides):
    """Run phase 2 with a person answering: trains until the next query file is written, then stops."""
    relabel(run_dir, mode="interactive", **overrides)
    status(run_dir)


def answer(file: str, run_dir: str = "runs/alr"):
    """Validate an expert's answers CSV for the pending round and apply it (every bad row is reported at once,
    and nothing is applied when any row is bad)."""
    from alr_monai.relabel import apply_answers_file

    relabel_dir = Path(run_dir) / "relabel"
    state = apply_answers_file(
        relabel_dir / "state.json", relabel_dir / "audit.csv", relabel_dir / "labels_cleaned.csv", file
    )
    entry = state.history[-1]
    print(
        f"round {entry['round']}: applied {entry['labels_spent']} answers ({entry['labels_changed']} labels changed, "
        f"{entry['excluded']} excluded, {entry['skipped']} skipped). Continue with: alr query --run_dir {run_dir}"
    )


def status(run_dir: str = "runs/alr"):
    """Print the relabel round, labels spent, and what is waiting."""
    from alr_monai.relabel import RoundState

    state_path = Path(run_dir) / "relabel" / "state.json"
    if not state_path.is_file():
        phase1 = (Path(run_dir) / "metrics.json").is_file()
        print(f"{run_dir}: phase 1 {'finished' if phase1 else 'not run'}; no relabel round started yet")
        return
    state = RoundState.load(state_path)
    print(
        f"{run_dir}: {state.round} round(s) applied, {state.budget_spent} labels spent, pool {len(state.pool_indices())}"
    )
    if state.pending_round is not None:
        pending = state.pending_round
        query_file = Path(run_dir) / "relabel" / "queries" / f"round_{pending}.csv"
        answers_file = Path(run_dir) / "relabel" / "answers" / f"round_{pending}.csv"
        print(f"waiting: round {pending} query {query_file} ({len(state.pending_ids())} samples)")
        print(f"  fill expert_label and save as {answers_file}, or run: alr answer <file> --run_dir {run_dir}")
    else:
        print("nothing waiting for the expert")


def report(run_dir: str = "runs/alr"):
    """Write report.md for a run and print it."""
    from alr_monai.report import write_report

    print(write_report(run_dir).read_text())


def demo(
    output_dir: str = "runs/demo",
    noise_rate: float = 0.6,
    max_epochs: int = 30,
    rounds: int = 5,
    budget: int = 100,
    acquisition: str = "entropy",
    seed: int = 0,
):
    """Phase 1 and simulated relabel rounds on the embedded long-tailed BloodMNIST subset, with a report.

    The run folder is reused: a finished phase is not rerun (delete the folder to start over).
    """
    from alr_monai.data.medmnist import load_medmnist
    from alr_monai.data.noise import inject_noise, noise_table

    data = load_medmnist()
    train_split = data["train"]
    noisy = inject_noise(train_split.labels, noise_rate, data.num_classes, "symmetric", seed, ids=train_split.ids)
    print(f"Embedded BloodMNIST subset (MedMNIST v2, CC BY 4.0): {len(train_split)} training images, long-tailed IR 20")
    print(f"Injected {noise_rate:.0%} symmetric label noise (seed {seed}):\n{noise_table(noisy, data.class_names)}\n")
    run_dir = Path(output_dir)
    if (
        not (run_dir / "metrics.json").is_file()
        or json.loads((run_dir / "metrics.json").read_text())["epoch"] < max_epochs
    ):
        train(
            output_dir=str(run_dir),
            max_epochs=max_epochs,
            seed=seed,
            **{"simulation#noise_rate": noise_rate},
        )
    relabel(
        str(run_dir),
        mode="simulation",
        **{"relabel#num_rounds": rounds, "relabel#round_budget": budget, "relabel#acquisition": acquisition},
    )
    report(str(run_dir))


def benchmark(
    preset: str = "configs/benchmarks/full.json",
    out: str = "runs/benchmark",
    data: str | None = None,
    imbalance_ratio: float | None = None,
    shard: str | None = None,
):
    """Run or resume a benchmark matrix (finished cells are not rerun); writes results.csv, results.md, plots.

    Args:
        preset: a JSON in configs/benchmarks (full, small, phase1_noise0.6) or any path.
        out: output folder.
        data: any MedMNIST-layout .npz (default: the preset's, else the embedded subset).
        imbalance_ratio: long-tail the training split of ``data`` to this ratio, e.g. 20.
        shard: "K/N" to run the K-th of N interleaved parts of the cells, so N processes share ``out`` (then
            run once without a shard to write the complete tables).
    """
    from alr_monai.benchmark import run_benchmark

    path = Path(preset)
    if not path.is_file() and (REPO_ROOT / "configs" / "benchmarks" / f"{preset}.json").is_file():
        path = REPO_ROOT / "configs" / "benchmarks" / f"{preset}.json"
    run_benchmark(path, out, data, imbalance_ratio, shard)


class Manifest:
    """Manifest tools."""

    @staticmethod
    def build(root: str, out: str = "manifest.csv"):
        """Turn ROOT/<class>/<files> (.dcm .nii .nii.gz .png .jpg) into a manifest CSV."""
        from alr_monai.data.manifest import build_manifest_from_folder, load_manifest

        path = build_manifest_from_folder(root, out)
        manifest = load_manifest(path, check_images=False)
        print(f"wrote {path}: {len(manifest.records)} images, classes {manifest.class_names}")

    @staticmethod
    def check(path: str, classes: Sequence[str] | None = None, root: str | None = None):
        """Validate a manifest; every bad row is reported at once."""
        from alr_monai.data.manifest import load_manifest

        manifest = load_manifest(path, class_names=classes, root=root)
        counts = {name: 0 for name in manifest.class_names}
        for record in manifest.records:
            counts[record["label_name"]] += 1
        print(f"{path}: {len(manifest.records)} rows OK; per class {counts}")


COMMANDS = {
    "demo": demo,
    "train": train,
    "relabel": relabel,
    "query": query,
    "answer": answer,
    "status": status,
    "report": report,
    "benchmark": benchmark,
    "manifest": Manifest,
}


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``alr`` console script."""
    from alr_monai.data.manifest import ManifestError
    from alr_monai.relabel import AnswerError, RoundError

    user_errors = (ManifestError, AnswerError, RoundError, FileNotFoundError, FileExistsError, ValueError)
    try:
        fire.Fire(COMMANDS, command=None if argv is None else list(argv), name="alr")
    except user_errors as error:
        print(f"alr: error: {error}", file=sys.stderr)
        sys.exit(2)
    except RuntimeError as error:
        # MONAI wraps an error raised while evaluating a config expression; show the user the cause.
        cause = error.__cause__
        if isinstance(cause, user_errors):
            print(f"alr: error: {cause}", file=sys.stderr)
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
