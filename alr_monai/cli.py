"""The ``alr`` command (fire): a thin layer over the bundle configs and the Python API.

    alr demo                                  phase 1 + 5 simulated rounds on the embedded data
    alr train --output_dir runs/x             phase 1 (co-teaching + VoG) on the embedded data
    alr train --manifest labels.csv ...       phase 1 on a DICOM/NIfTI/PNG manifest
    alr relabel --run_dir runs/x              phase 2, simulated rounds (oracle answers)
    alr query --run_dir runs/x                phase 2 with a person: run until the next query file is written
    alr answer FILE --run_dir runs/x          validate and apply an expert's answers (--dry_run: apply nothing)
    alr status --run_dir runs/x               round, labels spent, what is waiting
    alr recover --run_dir runs/x              rebuild a lost relabel/state.json from the rounds' files
    alr report --run_dir runs/x               write and print report.md
    alr issues --run_dir runs/x               label_issues.csv: every sample ranked by how suspect its label is
    alr predict FOLDER_OR_CSV --run_dir runs/x  predictions.csv for a folder of images or a manifest
    alr benchmark --preset small              a benchmark matrix (configs/benchmarks), resumable
    alr manifest build ROOT --out m.csv       folder tree ROOT/<class>/<files> -> manifest
    alr manifest check m.csv                  validate a manifest, report every bad row
    alr manifest check m.csv --decode         ... and decode every image as training will

Bundle keys are set as flags, e.g. ``--max_epochs 5`` or ``--vog#mix_ratio 0.1``; ``alr CMD --help`` lists the
keys a command accepts (from :mod:`alr_monai.keys`), with defaults and meanings. Every argument is checked before
fire runs the command, so a typo or a bad value is refused before any file is written. Errors print one or two
lines and exit with code 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import fire

from alr_monai import keys as keys_
from alr_monai.keys import MODES, KeyError_, check_overrides, closest
from alr_monai.workflow import (
    RUN_CONFIG,
    benchmark_preset_file,
    coerce_literal,
    load_run_config,
    phase1_files,
    relabel_files,
    run_workflow,
    save_run_config,
    set_verbose,
    with_multi_process_overlay,
)

HELP_FLAGS = ("-h", "--help")
DEBUG_FLAG = "--debug"
VERBOSE_FLAG = "--verbose"


class UsageError(ValueError):
    """A command line the CLI refuses (unknown option, missing argument, bad value)."""


# ------------------------------------------------------------------------------------------------ commands
def train(
    output_dir: str = "runs/alr",
    preset: str | Sequence[str] | None = None,
    manifest: str | None = None,
    nproc: int = 1,
    tracking: str | None = None,
    tracking_uri: str | None = None,
    experiment_name: str | None = None,
    **overrides,
):
    """Phase 1: co-teaching with small-loss + VoG selection. Resumes if output_dir holds a checkpoint.

    Args:
        output_dir: the run folder (checkpoints, selection.csv, metrics.json, tensorboard/).
        preset: preset name(s) in configs/presets (paper_recipe, coteaching, ce, smoke) or .json paths.
        manifest: a manifest CSV (id,image,label[,patient_id,split]) to train on instead of the embedded data.
        nproc: processes to train with (torchrun, one per GPU; gloo on the CPU); batch_size stays the global batch.
        tracking: "mlflow": log the training loss, the learning rate and the validation metrics to MLflow (MONAI's
            --tracking mlflow; needs the mlflow package).
        tracking_uri: the MLflow store (default: sqlite:///OUTPUT_DIR/mlruns.db, MONAI's default; MLflow 3.13+
            and MONAI refuse a file: store) or a tracking server's http(s) URI.
        experiment_name: the MLflow experiment (default monai_experiment).
        **overrides: bundle keys, e.g. max_epochs=5 or "vog#mix_ratio"=0.1.
    """
    if _phase1(output_dir, preset, manifest, nproc, overrides, tracking, tracking_uri, experiment_name):
        run_dir = shlex.quote(str(output_dir))
        from alr_monai.report import run_headline

        print(run_headline(output_dir), flush=True)
        simulated = (Path(output_dir) / "noise.csv").is_file()
        print(
            f"Next: alr query --run_dir {run_dir} (an expert answers each round)"
            + (f", or alr relabel --run_dir {run_dir} (simulated answers from the truth)" if simulated else ""),
            flush=True,
        )


def _phase1(
    output_dir: str,
    preset: str | Sequence[str] | None,
    manifest: str | None,
    nproc: int,
    overrides: dict[str, Any],
    tracking: str | None = None,
    tracking_uri: str | None = None,
    experiment_name: str | None = None,
) -> bool:
    """Run phase 1 as `alr train` does and print its summary; True when it ran in this process and it is the one
    that prints (not torchrun's launcher, not a rank > 0)."""
    check_overrides(overrides, ("train", "manifest") if manifest else ("train",), "train", strict=False)
    tracking_keys = tracking_overrides(tracking, tracking_uri, experiment_name)
    check_device(overrides.get("device"))
    if _launch_processes(nproc, overrides.get("device")):
        return False
    if manifest and not Path(manifest).is_file():
        raise FileNotFoundError(
            f"manifest file {manifest} not found: pass the path of your manifest CSV "
            "(`alr manifest build ROOT --out m.csv` makes one from a folder per class)"
        )
    if overrides.get("pretrained") not in (None, "", "null", "None"):
        pretrained = Path(str(overrides["pretrained"])).expanduser()
        if not pretrained.is_file():
            raise FileNotFoundError(f"--pretrained file {pretrained} not found: pass a .pt state dict or model.pt")
        overrides["pretrained"] = str(pretrained.resolve())  # run_config.json and resumes must not depend on cwd
    run_dir = Path(output_dir)
    given_labels = bool(manifest) and coerce_literal(overrides.get("noisy_label_column")) is not None
    files = phase1_files(preset, bool(manifest), given_labels)
    overrides = {"output_dir": str(run_dir), **overrides}
    if manifest:
        overrides["manifest_path"] = str(Path(manifest).resolve())
    from alr_monai.distributed import is_main_process
    from alr_monai.relabel.state import refuse_phase1_rerun
    from alr_monai.report import write_report
    from alr_monai.rollback import before_lock, restore, snapshot
    from alr_monai.runlock import run_lock

    refuse_phase1_rerun(run_dir)  # phase 1 is frozen once relabel rounds exist: refused before anything is written
    found = before_lock(run_dir)
    with run_lock(run_dir, "train"):  # before run_config.json: a second process must change nothing
        before = snapshot(run_dir, found) if is_main_process() else None
        try:
            refuse_phase1_rerun(run_dir)  # again under the lock: a relabel command may have just finished
            if is_main_process():
                # the files of one process: a later `alr relabel` chooses its own number of processes
                save_run_config(run_dir, config_files=files, overrides=overrides)
            started = time.time()
            run_workflow(with_multi_process_overlay(files), {**overrides, **tracking_keys}, tracking=tracking)
        except Exception as error:
            # a setting the bundle refused during setup: leave the folder as it was (nothing once an epoch is saved)
            if before is not None and isinstance(unwrap(error), _user_errors()):
                restore(before)
            raise
        if is_main_process():
            from alr_monai.report import phase1_story

            write_report(run_dir)
            print(phase1_story(run_dir, time.time() - started), flush=True)
    return is_main_process()


def tracking_overrides(tracking: str | None, tracking_uri: str | None, experiment_name: str | None) -> dict[str, Any]:
    """MONAI's tracking keys for ``--tracking``; refuses settings without it and a missing mlflow package.

    Raises:
        UsageError: ``--tracking_uri`` or ``--experiment_name`` without ``--tracking mlflow``, or mlflow not
            installed.
    """
    if tracking is None:
        given = [
            name for name, value in (("tracking_uri", tracking_uri), ("experiment_name", experiment_name)) if value
        ]
        if given:
            raise UsageError(f"--{given[0]} needs --tracking mlflow")
        return {}
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        raise UsageError("--tracking mlflow needs the mlflow package: pip install mlflow (or mlflow-skinny)")
    keys: dict[str, Any] = {}
    if tracking_uri:
        keys["tracking_uri"] = str(tracking_uri)
    if experiment_name:
        keys["experiment_name"] = str(experiment_name)
    return keys


def relabel(run_dir: str = "runs/alr", mode: str = "simulation", nproc: int = 1, **overrides):
    """Phase 2: active relabel rounds after phase 1 in the same run folder.

    The relabel keys given on the first `alr relabel` / `alr query` of a run are saved in run_config.json and
    reused on every resume; once rounds are written, a resume that changes one of them is refused (only
    relabel#num_rounds may change, to add rounds).

    Args:
        run_dir: the phase-1 run folder.
        mode: "simulation" (oracle answers from the injected noise's truth) or "interactive" (stops at each
            query; fill the file, then rerun `alr query --run_dir RUN_DIR`).
        nproc: processes to recalibrate with (torchrun; rank 0 alone queries and applies the answers).
        **overrides: e.g. "relabel#acquisition"="margin", "relabel#round_budget"=50, "relabel#num_rounds"=3.
    """
    check_device(_run_device(run_dir, overrides))
    if _launch_processes(nproc, _run_device(run_dir, overrides)):
        return
    _relabel(run_dir, mode, overrides, "relabel")


def check_device(device: Any) -> None:
    """Refuse a ``--device`` this machine does not have, before anything is written.

    Raises:
        UsageError: not a device name, or a CUDA device on a machine without CUDA or with fewer GPUs.
    """
    if device is None or (isinstance(device, str) and device.startswith("$")):  # an expression: the bundle's
        return
    import torch

    try:
        parsed = torch.device(str(device))
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {device!r} is not a device; give cpu, cuda or cuda:<index>") from None
    if parsed.type != "cuda":
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise UsageError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    if parsed.index is not None and parsed.index >= count:
        raise UsageError(f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")


def _run_device(run_dir: str, overrides: dict[str, Any]) -> str | None:
    """The ``device`` given now, else the one phase 1 was given (run_config.json), else None (the default)."""
    if "device" in overrides:
        return overrides["device"]
    try:
        return load_run_config(run_dir)["overrides"].get("device")
    except (FileNotFoundError, ValueError):  # reported properly once the relabel command reads it
        return None


def query(run_dir: str = "runs/alr", **overrides):
    """Phase 2 with a person answering: trains until the next query file is written, then stops.

    Relabel keys are saved with the run on first use and reused on resume, as for `alr relabel`.

    Args:
        run_dir: the phase-1 run folder.
        **overrides: relabel keys, e.g. "relabel#round_budget"=20.
    """
    _relabel(run_dir, "interactive", overrides, "query")
    status(run_dir)


def _relabel(run_dir: str, mode: str, overrides: dict[str, Any], command: str) -> None:
    if mode not in MODES:
        raise UsageError(f"--mode {mode!r} is not accepted; choose one of: {', '.join(MODES)}")
    check_overrides(overrides, ("relabel",), command, strict=False)
    check_device(_run_device(run_dir, overrides))
    run_path = Path(run_dir)
    from alr_monai.runlock import run_lock

    config = load_run_config(run_path)  # a clear error before anything is created if phase 1 never ran there
    # phase 1 injected noise (``simulation`` not nulled, as train_manifest.json does), so the true labels exist
    if mode == "simulation" and _configured_value(config, "simulation") is None:
        raise UsageError(
            f"alr {command} --mode simulation needs injected noise: its oracle answers from the truth, and phase 1 "
            f"in {run_dir} trained on given labels with no truth (a manifest run); "
            f"ask an expert instead: alr query --run_dir {shlex.quote(str(run_dir))}"
        )
    from alr_monai.distributed import is_main_process
    from alr_monai.rollback import before_lock, restore, snapshot

    found = before_lock(run_path)
    with run_lock(run_path, "relabel", create=False):
        before = snapshot(run_path, found) if is_main_process() else None
        try:
            _relabel_locked(run_path, run_dir, mode, overrides)
        except Exception as error:
            # refused before any round's file or checkpoint was written: run_config.json and the state as they were
            if before is not None and isinstance(unwrap(error), _user_errors()):
                restore(before)
            raise


def _relabel_locked(run_path: Path, run_dir: str, mode: str, overrides: dict[str, Any]) -> None:
    config = load_run_config(run_path)
    settings = relabel_settings(run_path, config, overrides)
    from alr_monai.distributed import is_main_process

    saved = "relabel" in json.loads((run_path / RUN_CONFIG).read_text())
    if is_main_process() and (settings != config["relabel"] or not saved):
        save_run_config(run_path, relabel=settings)
    merged = {
        **config["overrides"],
        "output_dir": str(run_path),  # the run folder given now, even if phase 1 ran under another path
        **settings,
        "relabel#mode": mode,
        # The settings are saved, so this plain command resumes with them.
        "relabel#resume_command": f"alr query --run_dir {shlex.quote(str(run_dir))}",
    }
    run_workflow(with_multi_process_overlay(relabel_files(config["config_files"])), merged)
    from alr_monai.report import run_headline, write_report

    if is_main_process():
        write_report(run_path)
        if _load_state_json(run_path).get("pending_round") is None:  # not waiting for a person: the end
            print(run_headline(run_path), flush=True)


def _load_state_json(run_path: Path) -> dict[str, Any]:
    try:
        return json.loads((run_path / "relabel" / "state.json").read_text())
    except (OSError, ValueError):
        return {}


# ------------------------------------------------------------------------------------------------ processes
_ARGV: list[str] = []  # the command line main() runs, which --nproc relaunches under torchrun


def _launch_processes(nproc: int, device: str | None = None) -> bool:
    """With ``nproc`` > 1 outside torchrun: rerun this command under torchrun with ``nproc`` processes and return
    True once they finish; False means "run here" (one process, or already one of torchrun's processes, which
    joins the process group with the backend for ``device``: gloo for "cpu" even where GPUs exist).

    Raises:
        UsageError: ``nproc`` is not a positive integer.
        RuntimeError: the processes failed (their output names the cause).
    """
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise UsageError(f"--nproc must be a positive integer, got {nproc!r}")
    if "WORLD_SIZE" in os.environ:  # one of torchrun's processes: join the group before anything is written
        from alr_monai.distributed import init_distributed

        init_distributed(device=device)
        return False
    if nproc == 1:
        return False
    import subprocess

    args = list(_ARGV)
    for position, arg in enumerate(args):
        if arg == "--nproc":
            del args[position : position + 2]
            break
        if arg.startswith("--nproc="):
            del args[position]
            break
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    command += ["-m", "alr_monai.cli", *args]
    print(f"alr: starting {nproc} processes: {shlex.join(command[2:])}", flush=True)
    completed = subprocess.run(command, check=False)
    if completed.returncode:
        raise RuntimeError(
            f"the {nproc} processes stopped with exit code {completed.returncode} (see their output above)"
        )
    return True


def rounds_written(run_dir: Path) -> bool:
    """True once a relabel round's query file exists: from then on its settings are fixed."""
    return any((Path(run_dir) / "relabel" / "queries").glob("round_*.csv"))


def relabel_settings(run_dir: Path, config: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The phase-2 settings of a run: those saved in run_config.json, updated by ``overrides``.

    Raises:
        UsageError: rounds are already written (a query file exists) and ``overrides`` changes a setting
            they were written with.
    """
    saved = dict(config["relabel"])
    if rounds_written(run_dir):
        for name, value in overrides.items():
            if not keys_.is_fixed_in_rounds(name):
                continue
            before = saved[name] if name in saved else _configured_value(config, name)
            if _same(before, value):
                continue
            raise UsageError(
                f"--{name} {value!r}: this run's relabel rounds were written with {name} = {before!r} "
                f"(saved in {run_dir / 'run_config.json'}); rerun without --{name} to resume with the saved "
                "settings, or, for another value, copy the run folder without its relabel/ folder and relabel there"
            )
    return {**saved, **overrides}


def _same(a: Any, b: Any) -> bool:
    return coerce_literal(a) == coerce_literal(b)


def _configured_value(config: dict[str, Any], name: str) -> Any:
    """``name``'s value in the run's phase-1 overrides, else its last setting in the run's config files."""
    if name in config["overrides"]:
        return config["overrides"][name]
    value: Any = None
    for path in relabel_files(config["config_files"]):
        node: Any = json.loads(Path(path).read_text())
        if name in node:
            value = node[name]
            continue
        for part in name.split("#"):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            value = node
    return value


def answer(file: str, run_dir: str = "runs/alr", dry_run: bool = False, allow_empty: bool = False, reader: str = ""):
    """Validate an expert's answers CSV for the pending round and apply it.

    Every bad row is reported at once, and nothing is applied when any row is bad.

    Args:
        file: the answers CSV (the filled-in query file, or any CSV with id and expert_label columns).
        run_dir: the run folder.
        dry_run: validate and print what would change; apply nothing.
        allow_empty: close the round even if the file answers nothing (every expert_label blank).
        reader: who answered, recorded in audit.csv for rows without a ``reader`` cell of their own. Required
            when the run has several readers per round (``relabel#readers``): each reader's file is kept, and the
            round is applied when all are in and the consensus (or the adjudicator) has decided every sample.
    """
    from alr_monai.relabel import RoundError, RoundState, apply_answers_file, read_answers
    from alr_monai.relabel.expert import class_label
    from alr_monai.relabel.readers import ADJUDICATOR, read_reader_settings, submit_reader_answers
    from alr_monai.relabel.state import answer_summary, check_audit, is_label_change, relabel_outputs

    relabel_dir = Path(run_dir) / "relabel"
    state_path = relabel_dir / "state.json"
    if not state_path.is_file() and not relabel_outputs(relabel_dir):  # lost with rounds: the load says how to recover
        raise FileNotFoundError(
            f"{state_path} not found: no relabel round was started in {run_dir}; run `alr query --run_dir {run_dir}`"
        )
    settings = read_reader_settings(relabel_dir)
    if settings.readers > 1 and not dry_run:
        state = RoundState.load(state_path)
        check_audit(state, relabel_dir / "audit.csv", state_path)  # before a reader's file is kept
        if state.pending_round is None:
            raise RoundError(f"no query is pending in {state_path} ({state.round} rounds applied)")
        if not reader:
            raise UsageError(
                f"this run has {settings.readers} readers per round: say whose answers these are with --reader NAME "
                f"(the adjudicator answers the adjudication file with --reader {ADJUDICATOR})"
            )
        pending = state.pending_round
        result = submit_reader_answers(
            relabel_dir, pending, state.queried[str(pending)], state.ids, state.class_names, file, reader, settings,
            allow_empty,
        )  # fmt: skip
        if result["status"] == "waiting":
            print(
                f"round {pending}: kept {reader}'s answers ({len(result['readers_in'])} of {settings.readers} readers "
                f"in; waiting for {result['missing']} more)"
            )
            return
        if "kappa" in result:
            print(
                f"round {pending}: readers agree on {result['percent_agreement']:.0%} of "
                f"{result['agreement_samples']} samples (kappa {result['kappa']:.2f}, {result['kappa_kind']})"
            )
        if result["status"] == "adjudication":
            print(
                f"round {pending}: {result['disputed']} samples without {settings.rule} consensus; the adjudicator "
                f"fills {result['adjudication_file']} and runs: alr answer <that file> --run_dir "
                f"{shlex.quote(str(run_dir))} --reader {ADJUDICATOR}"
            )
            return
        file = result["answers_file"]
    if dry_run:
        state = RoundState.load(state_path)
        if state.pending_round is None:
            raise RoundError(f"no query is pending in {state_path} ({state.round} rounds applied)")
        pending = state.pending_round
        answers = read_answers(file, state.class_names, state.queried[str(pending)], state.ids, allow_empty, reader)
        rows = state.apply_answers(pending, answers, "expert")  # in memory only: nothing is written
        entry = state.history[-1]
        print(f"dry run, round {pending}: {answer_summary(entry)} would be applied; nothing was written")
        number = {name: class_label(i, state.class_names) for i, name in enumerate(state.class_names)}
        for row in rows:
            if is_label_change(row):  # "1 (basophil) -> 3 (erythroblast)": the numbers the page and the CSV use
                print(
                    f"  {row['id']}: {number.get(row['old_label'], row['old_label'])} -> "
                    f"{number.get(row['new_label'], row['new_label'])}"
                )
        print(f"Apply with: alr answer {shlex.quote(str(file))} --run_dir {shlex.quote(str(run_dir))}")
        return
    state = apply_answers_file(
        state_path,
        relabel_dir / "audit.csv",
        relabel_dir / "labels_cleaned.csv",
        file,
        allow_empty=allow_empty,
        reader=reader,
    )
    entry = state.history[-1]
    print(
        f"round {entry['round']}: applied {answer_summary(entry)}. "
        f"Continue with: alr query --run_dir {shlex.quote(str(run_dir))}"
    )


def predict(
    source: str,
    run_dir: str = "runs/alr",
    out: str | None = None,
    model: str = "final",
    split: str | None = None,
    device: str | None = None,
):
    """Predict a folder of images (searched recursively) or a manifest CSV with a run's model.

    Writes predictions.csv (id, image, prob_<class> per class, predicted_index, predicted_label); unreadable files
    (missing, unsupported, undecodable) are skipped and listed in skipped_images.csv beside it.

    Args:
        source: a folder of image files (.dcm, .nii, .nii.gz, .png, .jpg, .jpeg, or extensionless DICOM) or a
            manifest CSV (id and image columns).
        run_dir: the trained run folder (a manifest run: models/metadata.json says how its model reads images).
        out: the output folder; default RUN_DIR/predict/<source name>.
        model: "final" (phase 2's model when rounds ran, else phase 1's), "phase1", or a model .pt file.
        split: predict only the manifest rows of this split.
        device: torch device, e.g. cpu or cuda:1 (default cuda:0 if available, else cpu).
    """
    from alr_monai.predict import predict as run_predict

    result = run_predict(source, run_dir, out, model=model, device=device, split=split)
    print(f"predicted {result['predicted']} images with {result['model']}: {result['predictions']}")
    if result["skipped_count"]:
        print(f"skipped {result['skipped_count']} unreadable files, listed with the reason in {result['skipped']}")
    if result["ignored"]:
        counts = ", ".join(f"{count} {suffix}" for suffix, count in result["ignored"].most_common())
        print(f"not images, left out: {counts}")


def status(run_dir: str = "runs/alr"):
    """Print the relabel round, labels spent, what is waiting, and the next command to run.

    Args:
        run_dir: the run folder.
    """
    from alr_monai.relabel import RoundState
    from alr_monai.relabel.expert import class_legend
    from alr_monai.relabel.readers import read_reader_settings
    from alr_monai.relabel.state import AuditError, check_audit, relabel_outputs

    run = shlex.quote(str(run_dir))
    state_path = Path(run_dir) / "relabel" / "state.json"
    if not state_path.is_file() and not relabel_outputs(state_path.parent):  # lost with rounds: load refuses
        phase1 = (Path(run_dir) / "metrics.json").is_file()
        print(f"{run_dir}: phase 1 {'finished' if phase1 else 'not run'}; no relabel round started yet")
        if phase1:
            print(
                f"Next: alr query --run_dir {run} (asks round 1 of {_num_rounds(run_dir)}; "
                f"or alr relabel --run_dir {run} to simulate the expert)"
            )
        else:
            print(f"Next: alr train --output_dir {run}")
        return
    state = RoundState.load(state_path)
    rounds = _num_rounds(run_dir)
    print(
        f"{run_dir}: {state.round} of {rounds} round(s) applied, {state.budget_spent} labels spent, "
        f"pool {len(state.pool_indices())}"
    )
    try:
        check_audit(state, state_path.parent / "audit.csv", state_path)
    except AuditError as error:
        print(f"problem: {error}")
    if state.pending_round is not None:
        pending = state.pending_round
        query_file = Path(run_dir) / "relabel" / "queries" / f"round_{pending}.csv"
        answers_file = Path(run_dir) / "relabel" / "answers" / f"round_{pending}.csv"
        print(f"waiting: round {pending} of {rounds}, query {query_file} ({len(state.pending_ids())} samples)")
        if not query_file.is_file():
            print(f"  {query_file} is missing: run `alr query --run_dir {run_dir}` to write it again (same samples)")
        page = query_file.with_suffix(".html")
        if page.is_file():
            print(f"  open {page} in a web browser, answer, and press 'Save answers CSV'")
        print(f"  or fill the expert_label column of {query_file} (or save it as {answers_file})")
        print(f"  class numbers (page keys and expert_label): {class_legend(state.class_names)}")
        settings = read_reader_settings(Path(run_dir) / "relabel")
        if settings.readers > 1:
            kept = sorted(path.stem for path in (answers_file.parent / f"round_{pending}").glob("*.csv"))
            print(
                f"  {settings.readers} readers per round ({settings.rule}); answers kept from: "
                f"{', '.join(kept) or 'nobody yet'}"
            )
            print(f"Next: alr answer <saved file> --run_dir {run} --reader NAME")
        else:
            print(f"Next: alr answer <saved file> --run_dir {run}")
        return
    print("nothing waiting for the expert")
    simulated = bool(state.history) and state.history[-1].get("source") == "oracle"
    command = f"alr relabel --run_dir {run}" if simulated else f"alr query --run_dir {run}"
    last = state.history[-1] if state.history else None
    recalibrated = last is None or bool(last.get("metrics"))
    if not state.pool_indices():
        print(f"the pool is empty: every suspect label is answered.\nNext: alr report --run_dir {run}")
    elif state.round < rounds:
        then = f"asks round {state.round + 1} of {rounds}"
        step = then if recalibrated else f"recalibrates the model on round {state.round}'s answers, then {then}"
        print(f"Next: {command} ({step})")
    elif not recalibrated:
        print(f"Next: {command} (recalibrates the model on round {state.round}'s answers, the last of {rounds})")
    else:
        print(
            f"all {rounds} rounds are done.\nNext: alr report --run_dir {run} (the results), or add rounds: "
            f"{command} --relabel#num_rounds {rounds + 1} (or more)"
        )


def _num_rounds(run_dir: str) -> int:
    """The run's ``relabel#num_rounds``: saved in run_config.json by the first relabel command, else the default."""
    try:
        config = load_run_config(run_dir)
    except (FileNotFoundError, ValueError):
        config = None
    if config is not None and "relabel#num_rounds" in config.get("relabel", {}):
        return int(config["relabel"]["relabel#num_rounds"])
    if config is not None:
        value = _configured_value(config, "relabel#num_rounds")
        if value is not None:
            return int(value)
    from alr_monai.workflow import bundle_file

    return int(json.loads(Path(bundle_file("relabel.json")).read_text())["relabel"]["num_rounds"])


def recover(run_dir: str = "runs/alr"):
    """Rebuild a missing or unreadable relabel/state.json from the rounds' query, answers and audit files, or a
    deleted, truncated or edited relabel/audit.csv from the answers files (intact rows kept as they are).

    Refuses, and writes nothing, if those files disagree with each other or with labels_cleaned.csv.

    Args:
        run_dir: the run folder.
    """
    from alr_monai.relabel.recover import recover_run

    recovery = recover_run(run_dir)
    for note in recovery.notes:
        print(note)
    print(f"rebuilt {Path(run_dir) / 'relabel' / recovery.rebuilt}; continue with the command you were running")


def issues(run_dir: str = "runs/alr", top: int = 20):
    """Write label_issues.csv: every training sample ranked by how likely its given label is wrong.

    Needs only phase 1. A sample is suspect when its loss lies in the top share of its given class that the
    class's estimated noise rate predicts wrong; the suspicion score (how far past that cut) ranks each class.
    Classes take turns in the ranking in proportion to their estimated wrong labels, so one class does not fill
    the top. Samples the expert already answered come after the open ones (with the expert's label), excluded
    samples last. Each row has the model's suggested label and the label quality (the model's probability of
    the given label; low = likely wrong).

    Args:
        run_dir: the run folder (phase 1 done).
        top: how many of the most suspect samples to print.
    """
    from alr_monai.label_issues import model_probabilities, write_label_issues

    if top < 0:
        raise UsageError(f"--top must be >= 0, got {top}")
    try:
        probabilities = model_probabilities(run_dir)
    except FileNotFoundError as error:
        probabilities = None
        print(f"no suggested labels or label quality: {error}")
    path, rows = write_label_issues(run_dir, probabilities=probabilities)
    suspects = sum(row["suspect"] for row in rows if row["status"] == "open")
    answered = sum(row["status"] == "answered" for row in rows)
    excluded = sum(row["status"] == "excluded" for row in rows)
    print(
        f"{path}: {len(rows)} samples ranked, {suspects} open suspects (past their class's estimated noise cut) "
        f"first, classes taking turns by their estimated wrong labels; {answered} answered by the expert and "
        f"{excluded} excluded are ranked last"
    )
    for row in rows[:top]:
        model = (
            f"model says {row['suggested_label']} ({row['suggested_probability']:.2f}), quality {row['label_quality']:.2f}"
            if row["suggested_label"]
            else ""
        )
        print(
            f"{row['rank']:>5}  {row['id']:<16} given {row['given_label']:<22} suspicion {row['suspicion']:+.3f}  "
            f"{model}{'  [' + row['status'] + ']' if row['status'] != 'open' else ''}"
        )


def report(run_dir: str = "runs/alr"):
    """Write report.md (PNG plots in report/) and report.html (self-contained) for a run; print report.md.

    Args:
        run_dir: the run folder.
    """
    from alr_monai.report import write_report

    if not (Path(run_dir) / "metrics.json").is_file():
        raise FileNotFoundError(
            f"{Path(run_dir) / 'metrics.json'} not found: {run_dir} holds no phase-1 results yet; "
            f"run `alr train --output_dir {run_dir}` (or check --run_dir)"
        )
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

    Args:
        output_dir: the run folder.
        noise_rate: share of training labels corrupted by symmetric noise.
        max_epochs: phase-1 epochs.
        rounds: relabel rounds.
        budget: samples queried per round.
        acquisition: how the pool is ranked (random, entropy, least_confidence, margin, bald, coreset, label_quality).
        seed: seed of everything (noise, training, oracle).
    """
    settings = {
        "simulation#noise_rate": noise_rate,
        "max_epochs": max_epochs,
        "seed": seed,
        "relabel#num_rounds": rounds,
        "relabel#round_budget": budget,
        "relabel#acquisition": acquisition,
    }
    check_overrides(settings, ("train", "relabel"), "demo")
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
        settings = {"max_epochs": max_epochs, "seed": seed, "simulation#noise_rate": noise_rate}
        _phase1(str(run_dir), None, None, 1, settings)
    print(f"\nRelabel rounds: {rounds} x {budget} labels chosen by {acquisition}, answered by the simulated expert")
    # the rounds print one line each, the round table and the headline with where to look (no report dump)
    relabel(
        str(run_dir),
        mode="simulation",
        **{"relabel#num_rounds": rounds, "relabel#round_budget": budget, "relabel#acquisition": acquisition},
    )


def benchmark(
    preset: str = "full",
    out: str = "runs/benchmark",
    data: str | None = None,
    imbalance_ratio: float | None = None,
    shard: str | None = None,
    data_dir: str | None = None,
):
    """Run or resume a benchmark matrix (finished cells are not rerun); writes results.csv, results.md, plots.

    Args:
        preset: the name of a matrix in configs/benchmarks (e.g. full, long_tail, rounds_matrix,
            rounds_breastmnist) or any .json path.
        out: output folder.
        data: any MedMNIST-layout .npz (default: the preset's, else the embedded subset).
        imbalance_ratio: long-tail the training split of data to this ratio, e.g. 20.
        shard: "K/N" to run the K-th of N interleaved parts of the cells, so N processes share out (then
            run once without a shard to write the complete tables).
        data_dir: suite presets (suite, suite_tiny): the folder their cells' data files are in, e.g.
            ../shared/data (cells without a file use the embedded subset).
    """
    from alr_monai.benchmark import run_benchmark

    run_benchmark(benchmark_preset_file(preset), out, data, imbalance_ratio, shard, data_dir)


class Manifest:
    """Manifest tools: build a manifest from a folder per class, split it, or check one."""

    @staticmethod
    def build(
        root: str,
        out: str = "manifest.csv",
        split: bool = False,
        val: float = 0.15,
        test: float = 0.15,
        seed: int = 0,
        patient_level: int | None = None,
        per_file: bool = False,
    ):
        """Turn ROOT/<class>/<files> (.dcm .nii .nii.gz .png .jpg, DICOM without extension, DICOM series folders)
        into a manifest CSV.

        Args:
            root: a folder with one subfolder per class.
            out: the manifest CSV to write.
            split: also assign train/val/test (as `alr manifest split` does).
            val: validation share with --split.
            test: test share with --split.
            seed: seed of the split with --split.
            patient_level: patient ids from this folder level below each class folder (1: ROOT/<class>/<PATIENT>/...);
                default: the DICOM PatientID tag.
            per_file: one row per DICOM file, also for the slices of a series (default: one row per series, its
                folder, read as one volume).
        """
        from alr_monai.data.manifest import build_manifest_from_folder, load_manifest

        if patient_level is not None and (isinstance(patient_level, bool) or not isinstance(patient_level, int)):
            raise UsageError(f"--patient_level {patient_level!r} is not accepted; expected an integer >= 1")
        skipped: dict[str, list[str]] = {}
        path = build_manifest_from_folder(root, out, patient_level=patient_level, series=not per_file, skipped=skipped)
        manifest = load_manifest(path, check_images=False)
        volumes = sum(1 for r in manifest.records if Path(r["image"].split("#")[0]).is_dir())
        patients = len({r["patient_id"] for r in manifest.records if r["patient_id"]})
        print(
            f"wrote {path}: {len(manifest.records)} images"
            + (f" ({volumes} DICOM series read as volumes)" if volumes else "")
            + f", classes {manifest.class_names}, "
            + (f"{patients} patients" if patients else "no patient ids (see --patient_level)")
        )
        for reason, files in sorted(skipped.items()):
            examples = ", ".join(files[:3]) + (", ..." if len(files) > 3 else "")
            print(f"  skipped {len(files)} file{'s' if len(files) != 1 else ''}: {reason} ({examples})")
        if split:
            Manifest.split(str(path), val=val, test=test, seed=seed)

    @staticmethod
    def split(
        path: str, out: str | None = None, val: float = 0.15, test: float = 0.15, seed: int = 0, overwrite: bool = False
    ):
        """Add a train/val/test split column: stratified by label, no patient in two splits, seeded.

        Args:
            path: the manifest CSV.
            out: where to write the split manifest (default: PATH itself, rewritten atomically).
            val: validation share.
            test: test share.
            seed: seed of the assignment.
            overwrite: replace split values the manifest already has.
        """
        from alr_monai.data.splits import SPLIT_NAMES, split_manifest
        from alr_monai.tables import markdown_table

        for name, share in (("val", val), ("test", test)):
            if not 0.0 <= float(share) < 1.0:
                raise UsageError(f"--{name} {share!r} is not accepted; give a share between 0 and 1, e.g. 0.15")
        if float(val) + float(test) >= 1.0:
            raise UsageError(f"--val {val} and --test {test} leave nothing to train on; their sum must be below 1")
        target, table = split_manifest(path, out, float(val), float(test), int(seed), bool(overwrite))
        print(f"wrote {target} (seed {seed}); images per split and class:")
        print(markdown_table(["class", *SPLIT_NAMES], table, str))

    @staticmethod
    def check(
        path: str,
        classes: Sequence[str] | None = None,
        root: str | None = None,
        decode: bool = False,
        workers: int | None = None,
        **overrides,
    ):
        """Validate a manifest; every bad row is reported at once.

        Args:
            path: the manifest CSV.
            classes: class names in index order (default: inferred from the labels).
            root: folder that every image must lie inside (default: no restriction).
            decode: also decode every image through the training chain (the --manifest keys below, as you will
                train with them) and report each undecodable, truncated, multi-frame, wrong-shape or
                wrong-channel-count file with the reason and the fix.
            workers: with --decode, images decoded at once (default: min(2, CPU count)).
            **overrides: the training keys that shape the chain (with --decode): spatial_dims, image_size,
                in_channels, intensity, channel_axis, spacing, orientation; sequences (the columns of a row's
                sequence files); and allow_patient_overlap (accept a patient in more than one split, warned with
                counts, as training would with the same flag).
        """
        from alr_monai.data.manifest import load_manifest

        check_overrides(overrides, ("manifest",), "manifest check", strict=False)
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise UsageError(f"--workers {workers!r} is not accepted; expected an integer >= 1")
        sequences = coerce_literal(overrides.get("sequences"))
        # With --decode the decode is the check (as in training), so every bad file is reported in its style.
        manifest = load_manifest(
            path,
            class_names=classes,
            root=root,
            sequences=sequences,
            check_images=not decode,
            allow_patient_overlap=bool(coerce_literal(overrides.get("allow_patient_overlap", False))),
        )
        counts = {name: 0 for name in manifest.class_names}
        for record in manifest.records:
            counts[record["label_name"]] += 1
        if not decode:
            print(f"{path}: {len(manifest.records)} rows OK; per class {counts}")
            print("  (pixels were not decoded: add --decode to decode every image as training will)")
            return
        _decode_check(manifest, workers, overrides)
        print(f"{path}: {len(manifest.records)} rows OK, every image decoded; per class {counts}")


def _decode_check(manifest: Any, workers: int | None, overrides: dict[str, Any]) -> None:
    """Decode every image of ``manifest`` with the chain ``alr train --manifest`` builds from the same keys."""
    from alr_monai.data.decode_check import BadImagesError, check_images
    from alr_monai.data.transforms import build_image_transforms

    def setting(name: str) -> Any:
        value = overrides.get(name, keys_.config_default("train_manifest.json", name))
        return coerce_literal(value)

    spatial_dims = int(setting("spatial_dims"))
    size = setting("image_size")
    if "image_size" not in overrides and len(size) != spatial_dims:
        size = [int(size[0])] * spatial_dims  # only the shape checks matter here, not the size
    transform = build_image_transforms(
        size,
        int(setting("in_channels")),
        spatial_dims=spatial_dims,
        intensity=setting("intensity"),
        channel_axis=setting("channel_axis"),
        spacing=setting("spacing"),
        orientation=setting("orientation"),
    )
    bad = check_images(manifest, transform, workers=workers)
    if bad:
        kinds: dict[str, int] = {}
        for b in bad:
            kinds[b.kind] = kinds.get(b.kind, 0) + 1
        summary = ", ".join(f"{n} {kind}" for kind, n in kinds.items())
        raise BadImagesError(
            bad,
            manifest.path,
            hint=(
                f"{len(bad)} of {len(manifest.records)} images cannot be used ({summary}); training refuses them "
                "unless --drop_bad_images true is given (then they are dropped and listed)"
            ),
        )


COMMANDS = {
    "demo": demo,
    "train": train,
    "relabel": relabel,
    "query": query,
    "answer": answer,
    "status": status,
    "recover": recover,
    "report": report,
    "issues": issues,
    "predict": predict,
    "benchmark": benchmark,
    "manifest": Manifest,
}
# Bundle-key phases each command accepts as --KEY VALUE (train adds "manifest" when --manifest is given).
COMMAND_PHASES: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "relabel": ("relabel",),
    "query": ("relabel",),
    "manifest check": ("manifest",),
}
# Choices of plain command arguments (bundle keys carry their own).
ARGUMENT_CHOICES: dict[tuple[str, str], tuple] = {
    ("relabel", "mode"): MODES,
    ("demo", "acquisition"): keys_.ACQUISITIONS,
    ("train", "tracking"): ("mlflow",),
}


# -------------------------------------------------------------------------------------- argument checking
def _subcommands(target: Any) -> dict[str, Callable]:
    return {
        name: getattr(target, name)
        for name in sorted(vars(target))
        if not name.startswith("_") and callable(getattr(target, name))
    }


def _parse_value(text: str) -> Any:
    """A flag's value as fire will pass it (fire's own parser)."""
    from fire import parser

    return parser.DefaultParseValue(text)


def check_argv(args: Sequence[str]) -> tuple[str, Callable] | None:
    """Check a command line before fire runs it; print help and exit 0 for ``-h`` / ``--help``.

    Returns:
        (command name, function) of a command line fire may run, or None when help was printed.

    Raises:
        UsageError: an unknown command, option or bundle key (with the closest known one), a bad value, a
            missing or extra argument.
        KeyError_: a bundle key's value the key does not accept.
    """
    args = list(args)
    if not args or args[0] in HELP_FLAGS:
        print(main_help())
        return None
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        hint = closest(name, list(COMMANDS))
        raise UsageError(
            f"unknown command {name!r}{f' (did you mean {hint}?)' if hint else ''}; commands: {', '.join(COMMANDS)}"
        )
    target = COMMANDS[name]
    if inspect.isclass(target):
        subs = _subcommands(target)
        if not rest or rest[0] in HELP_FLAGS:
            print(group_help(name, target))
            return None
        if rest[0] not in subs:
            hint = closest(rest[0], list(subs))
            raise UsageError(
                f"unknown command 'alr {name} {rest[0]}'{f' (did you mean {hint}?)' if hint else ''}; "
                f"commands: {', '.join(subs)}"
            )
        name, target, rest = f"{name} {rest[0]}", subs[rest[0]], rest[1:]
    if any(token in HELP_FLAGS for token in rest):
        print(command_help(name, target))
        return None
    _check_arguments(name, target, rest)
    return name, target


_NUMBER_ANNOTATIONS = {
    "int": (int, "an integer"),
    "float": ((int, float), "a number"),
    "float | None": ((int, float), "a number"),
}


def _check_arguments(name: str, function: Callable, args: list[str]) -> None:
    signature = inspect.signature(function)
    params = {p.name: p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD}
    takes_keys = len(params) < len(signature.parameters)
    positionals: list[str] = []
    flags: dict[str, Any] = {}
    i = 0
    while i < len(args):
        token = args[i]
        if token == "--":
            raise UsageError(f"alr {name}: unexpected '--'; pass options as --name value (see alr {name} --help)")
        if token.startswith("--"):
            flag, has_value, text = token[2:].partition("=")
            flag = flag.replace("-", "_")  # fire accepts --dry-run for dry_run
            if not has_value:
                if i + 1 < len(args) and not args[i + 1].startswith("--"):
                    text, i = args[i + 1], i + 1
                    value = _parse_value(text)
                else:
                    value = True
            else:
                value = _parse_value(text)
            if flag in flags:
                raise UsageError(f"alr {name}: --{flag} is given twice")
            flags[flag] = value
        else:
            positionals.append(token)
        i += 1

    keys: dict[str, Any] = {}
    for flag, value in flags.items():
        if flag in params:
            choices = ARGUMENT_CHOICES.get((name, flag))
            if choices and value not in choices:
                hint = closest(str(value), [str(c) for c in choices])
                raise UsageError(
                    f"--{flag} {value!r} is not accepted{f' (did you mean {hint}?)' if hint else ''}; "
                    f"choose one of: {', '.join(map(str, choices))}"
                )
            annotation = params[flag].annotation
            if annotation in ("bool", bool) and not isinstance(value, bool):
                raise UsageError(f"--{flag} is a switch and takes no value (got {value!r})")
            if value is True and annotation not in ("bool", bool):  # "--output_dir" at the end, or before a flag
                raise UsageError(
                    f"--{flag} needs a value, e.g. --{flag} {params[flag].default or flag.upper()} (see alr {name} --help)"
                )
            expected = _NUMBER_ANNOTATIONS.get(str(annotation))
            if expected and not (
                (value is None and "None" in str(annotation))
                or (isinstance(value, expected[0]) and not isinstance(value, bool))
            ):
                raise UsageError(f"--{flag} {value!r} is not accepted; expected {expected[1]}")
        elif takes_keys:
            keys[flag] = value
        else:
            hint = closest(flag, list(params))
            raise UsageError(
                f"unknown option --{flag} for alr {name}: {f'did you mean --{hint}? ' if hint else ''}"
                f"See alr {name} --help"
            )
    if takes_keys:
        phases = COMMAND_PHASES[name]
        if name == "train" and flags.get("manifest"):
            phases = (*phases, "manifest")
        allowed = {key.name: key for key in keys_.keys_for(phases)}
        known = [*allowed, *params]
        for flag, value in keys.items():
            if flag not in allowed:
                raise UsageError(keys_.unknown_key_message(flag, name, known))
            allowed[flag].check(value)

    free = [p for p in params.values() if p.name not in flags]
    if len(positionals) > len(free):
        extra = positionals[len(free) :]
        raise UsageError(f"alr {name}: unexpected argument(s) {extra} (see alr {name} --help)")
    given = {p.name for p in free[: len(positionals)]} | set(flags)
    missing = [p.name for p in params.values() if p.default is inspect.Parameter.empty and p.name not in given]
    if missing:
        raise UsageError(f"alr {name} needs {', '.join(m.upper() for m in missing)}; usage: {usage(name, function)}")


# ------------------------------------------------------------------------------------------------- help
def _doc_parts(function: Callable) -> tuple[str, dict[str, str]]:
    """(description, {argument: meaning}) from a Google-style docstring."""
    doc = inspect.getdoc(function) or ""
    head, _, args_block = doc.partition("\nArgs:\n")
    meanings: dict[str, str] = {}
    current = None
    for line in args_block.splitlines():
        match = re.match(r"^\s{4}(\*{0,2}\w+):\s*(.*)$", line)
        if match:
            current = match.group(1).lstrip("*")
            meanings[current] = match.group(2)
        elif current and line.startswith(" " * 8):
            meanings[current] += " " + line.strip()
        elif line.strip() and not line.startswith(" "):
            break
    return head.strip(), meanings


def usage(name: str, function: Callable) -> str:
    """The one-line usage of ``alr name``."""
    parts = [f"alr {name}"]
    signature = inspect.signature(function)
    for param in signature.parameters.values():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            parts.append("[--KEY VALUE ...]")
        elif param.default is inspect.Parameter.empty:
            parts.append(param.name.upper())
        elif param.annotation in ("bool", bool):
            parts.append(f"[--{param.name}]")
        else:
            parts.append(f"[--{param.name} {param.name.upper()}]")
    return " ".join(parts)


def _key_lines(phases: Sequence[str], indent: str = "  ") -> list[str]:
    lines = []
    for key in keys_.keys_for(phases):
        choices = f" {{{', '.join(map(str, key.choices))}}}" if key.choices else ""
        lines.append(f"{indent}--{key.name} (default {key.default_text()}){choices}")
        lines.append(f"{indent}    {key.meaning}")
    return lines


def command_help(name: str, function: Callable) -> str:
    """Help of one command: usage, description, its arguments, and every bundle key it accepts."""
    description, meanings = _doc_parts(function)
    lines = [f"usage: {usage(name, function)}", "", description, ""]
    signature = inspect.signature(function)
    arguments = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    if arguments:
        lines.append("arguments:")
        for param in arguments:
            default = "" if param.default is inspect.Parameter.empty else f" (default {param.default})"
            label = param.name.upper() if param.default is inspect.Parameter.empty else f"--{param.name}"
            choices = ARGUMENT_CHOICES.get((name, param.name))
            extra = f" {{{', '.join(map(str, choices))}}}" if choices else ""
            lines.append(f"  {label}{default}{extra}")
            if param.name in meanings:
                lines.append(f"      {meanings[param.name]}")
    phases = COMMAND_PHASES.get(name)
    if phases:
        lines += ["", f"bundle keys (--KEY VALUE; defaults from the bundle configs; see {keys_.__name__}):"]
        lines += _key_lines(phases)
        if name == "train":
            lines += ["", "bundle keys with --manifest only:"]
            lines += _key_lines(("manifest",))
    lines += [
        "",
        "  --debug  show the full traceback of an error",
        "  --verbose  show Ignite's and MONAI's per-event log lines (the console shows one line per epoch)",
        "  -h, --help  show this help and exit",
    ]
    return "\n".join(lines).replace("\n\n\n", "\n\n")


def group_help(name: str, target: Any) -> str:
    """Help of a command group such as ``alr manifest``."""
    lines = [f"usage: alr {name} COMMAND ...", "", inspect.getdoc(target) or "", "", "commands:"]
    for sub, function in _subcommands(target).items():
        lines.append(f"  {usage(f'{name} {sub}', function)}")
        lines.append(f"      {_doc_parts(function)[0].splitlines()[0]}")
    lines.append(f"\nalr {name} COMMAND --help shows a command's arguments.")
    return "\n".join(lines)


def main_help() -> str:
    """Help of ``alr``: the command list from this module's docstring."""
    doc = (__doc__ or "").split("\n\n")
    commands = doc[1] if len(doc) > 1 else ""
    return "\n".join(
        [
            "usage: alr COMMAND [ARGS] [--KEY VALUE ...] [--debug] [--verbose]",
            "",
            "Active Label Refinement: noise-robust training, then expert relabel rounds.",
            "",
            "commands:",
            *(line[4:] if line.startswith("    ") else line for line in commands.splitlines()),
            "",
            "alr COMMAND --help lists a command's arguments and every bundle key it accepts.",
            "Errors print one or two lines and exit 2; --debug shows the full traceback.",
            "Training prints one line per epoch (and a progress bar on a terminal); --verbose adds Ignite's log.",
        ]
    )


# --------------------------------------------------------------------------------------------- errors
def _user_errors() -> tuple[type[BaseException], ...]:
    from alr_monai.data.manifest import ManifestError
    from alr_monai.relabel import AnswerError, RoundError
    from alr_monai.runlock import RunLockedError

    return (
        UsageError,
        KeyError_,
        ManifestError,
        AnswerError,
        RoundError,
        RunLockedError,
        FileNotFoundError,
        FileExistsError,
        ValueError,
    )


# MONAI's wrappers around the user's error; "applying transform" wraps a per-file read error, which names the file.
_WRAPPER_MESSAGES = (
    "Failed to instantiate",
    "Failed to evaluate",
    "Failed to run",
    "failed to run",
    "applying transform",
)


def unwrap(error: BaseException) -> BaseException:
    """The user's error inside MONAI's wrappers ("Failed to instantiate component", "Failed to evaluate
    ConfigExpression"), however many levels deep."""
    seen = set()
    while id(error) not in seen:
        seen.add(id(error))
        inner = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
        if inner is None or not (isinstance(error, RuntimeError) and str(error).lstrip().startswith(_WRAPPER_MESSAGES)):
            break
        error = inner
    return error


def error_message(error: BaseException) -> str:
    """``error`` as the CLI prints it: its message, with the exception type where the message alone is vague."""
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    if isinstance(error, (FileNotFoundError, FileExistsError)) and error.filename and str(error.filename) not in text:
        text = f"{text}: {error.filename}"
    return text


class _QuietUserErrors(logging.Filter):
    """Drops MONAI's traceback log of an error the CLI reports itself in one line (a user's error)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return error is None or not isinstance(unwrap(error), _user_errors())


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``alr`` console script: check the arguments, run the command through fire."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in args
    verbose = VERBOSE_FLAG in args
    args = [a for a in args if a not in (DEBUG_FLAG, VERBOSE_FLAG)]
    set_verbose(verbose)
    _ARGV[:] = args
    if not debug:
        # StatsHandler logs every exception with its traceback before it reaches us
        logging.getLogger("monai.handlers.StatsHandler").addFilter(_QuietUserErrors())
    try:
        if check_argv(args) is None:
            return
        fire.Fire(COMMANDS, command=args, name="alr")
        if "WORLD_SIZE" in os.environ:  # one of torchrun's processes, done: free the DDP peers, leave the group
            from alr_monai.distributed import shutdown_distributed

            shutdown_distributed()
    except SystemExit:
        raise
    except KeyboardInterrupt:
        print("alr: interrupted; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        # `alr train --help | head`: the reader left; say nothing more on a closed pipe
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except Exception as error:
        if debug:
            raise
        cause = unwrap(error)
        if isinstance(cause, _user_errors()):
            print(f"alr: error: {error_message(cause)}", file=sys.stderr)
            sys.exit(2)
        print(
            f"alr: error: {type(cause).__name__}: {error_message(cause)}\n"
            "  (unexpected: rerun with --debug for the traceback, and report it if it is a bug)",
            file=sys.stderr,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
