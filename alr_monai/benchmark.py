"""The benchmark matrix: methods x noise settings x seeds, each phase 1 followed by relabel rounds per acquisition.

Every cell is an ordinary run folder written by the same bundle configs a user runs; a finished cell (or
relabel arm) is detected from its outputs and not rerun, so an interrupted matrix resumes where it stopped.
``results.csv`` is the matrix's durable record: a cell whose run folder was deleted (to free disk, or because only
the committed docs/ copy of a matrix survives) keeps its rows from the existing ``results.csv`` in ``out`` and is
not rerun, so a method or seed can be added to a finished matrix by running only the new cells.

A noise setting is a (kind, rate) pair: a preset lists them as ``noise_settings`` (``[["symmetric", 0.6],
["pairflip", 0.3]]``) or as one ``noise_kind`` with several ``noise_rates``. Method ``cleanlab`` is cleanlab's
confident learning with the CE baseline's network and recipe (:mod:`alr_monai.baselines.cleanlab_peer`; preset keys
``cleanlab_folds``, default 5, and ``cleanlab_fold_epochs``, default ``max_epochs``); its relabel rounds run on
its folder like every other method's.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from alr_monai.csvcells import unescape_dict
from alr_monai.tables import markdown_table
from alr_monai.utils import atomic_write_csv, atomic_write_text

# cleanlab's phase-1 and phase-2 files are the CE baseline's; its phase 1 adds the subset overlay itself
METHOD_PRESETS = {
    "ce": ["ce"],
    "coteaching": ["coteaching"],
    "paper_recipe": ["paper_recipe"],
    "ours": [],
    "cleanlab": ["ce"],
    # our selection (train.json alone) inside, then the CE recipe refitted on its trusted set: the rounds are CE's
    "ours_refit": ["ce"],
    "ours_plain_loss": ["plain_loss"],
    "ours_prototype_estimate": ["prototype_estimate"],
    "ours_class_balanced": ["class_balanced"],
}
RESULT_COLUMNS = [
    "method",
    "noise_kind",
    "noise_rate",
    "seed",
    "acquisition",
    "round",
    "labels_spent",
    "errors_found",
    "yield",
    "pool_noise_rate",
    "test_balanced_accuracy",
    "test_macro_f1",
    "val_balanced_accuracy",
    "phase1_test_balanced_accuracy",
    "phase1_test_macro_f1",
    "selection_precision",
    "min_clean_recall",
    "noise_rate_estimate",
    "noise_rate_true",
    "label_error_auroc",
    "label_error_ap",
    "noise_rate_class_mae",
    "per_class_clean_recall",
]


def noise_settings(preset: Mapping[str, Any], source: str | Path = "preset") -> list[tuple[str, float]]:
    """The (kind, rate) noise settings of a benchmark preset, in its order.

    Either ``noise_settings`` (a list of ``[kind, rate]`` pairs) or ``noise_kind`` (default symmetric) with
    ``noise_rates``; not both.

    Raises:
        ValueError: naming ``source`` and the key, for a malformed setting, an unknown kind or both forms at once.
    """
    from alr_monai.keys import NOISE_KINDS

    if "noise_settings" in preset:
        if "noise_rates" in preset or "noise_kind" in preset:
            raise ValueError(f"{source}: give either noise_settings or noise_kind + noise_rates, not both")
        raw = preset["noise_settings"]
        settings = []
        for entry in raw if isinstance(raw, list) else [raw]:
            if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[1], (int, float))):
                raise ValueError(f"{source}: noise_settings entries must be [kind, rate] pairs, got {entry!r}")
            settings.append((str(entry[0]), float(entry[1])))
    else:
        if "noise_rates" not in preset:
            raise ValueError(f"{source}: set noise_settings, or noise_rates (with an optional noise_kind)")
        kind = str(preset.get("noise_kind", "symmetric"))
        settings = [(kind, float(rate)) for rate in preset["noise_rates"]]
    for kind, rate in settings:
        if kind not in NOISE_KINDS:
            raise ValueError(f"{source}: unknown noise kind {kind!r}; choose one of {list(NOISE_KINDS)}")
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"{source}: noise rate {rate:g} ({kind}) must be in [0, 1)")
    if len(set(settings)) != len(settings):
        raise ValueError(f"{source}: noise_settings lists a setting twice: {settings}")
    return settings


def load_preset(path: str | Path) -> dict:
    """Read a benchmark preset JSON (see configs/benchmarks/)."""
    preset = json.loads(Path(path).read_text())
    unknown = set(preset.get("methods", [])) - set(METHOD_PRESETS)
    if unknown:
        raise ValueError(f"{path}: unknown method(s) {sorted(unknown)}; known: {sorted(METHOD_PRESETS)}")
    noise_settings(preset, path)
    for key in ("cleanlab_folds", "cleanlab_fold_epochs"):
        value = preset.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"{path}: {key} must be a positive integer, got {value!r}")
    if (preset.get("cleanlab_folds") or 5) < 2:
        raise ValueError(f"{path}: cleanlab_folds must be at least 2")
    return preset


def _cell_dir(out: Path, method: str, kind: str, rate: float, seed: int) -> Path:
    return out / method / f"{kind}{rate:g}" / f"seed{seed}"


def _setting_tag(kind: str, rate: float) -> str:
    """File-name tag of a noise setting in plot names: ``noise0.6`` for symmetric (as before), ``pairflip0.3``."""
    return f"noise{rate:g}" if kind == "symmetric" else f"{kind}{rate:g}"


def _phase1_done(run_dir: Path, method: str = "") -> bool:
    path = run_dir / "metrics.json"
    if not path.is_file():
        return False
    metrics = json.loads(path.read_text())
    # the cleanlab peer writes its selection and metrics after the final model's test evaluation
    if method == "ours_refit":  # the refit writes its section after the refitted model's test evaluation
        return "refit" in metrics
    return "test" in metrics and (method != "cleanlab" or "cleanlab" in metrics)


def _relabel_done(relabel_dir: Path, rounds: int) -> bool:
    path = relabel_dir / "rounds.csv"
    if not path.is_file():
        return False
    with open(path, newline="") as handle:
        return len(list(csv.DictReader(handle))) >= rounds + 1


def run_benchmark(
    preset: str | Path,
    out: str | Path = "runs/benchmark",
    data: str | None = None,
    imbalance_ratio: float | None = None,
    shard: str | None = None,
    data_dir: str | Path | None = None,
) -> Path:
    """Run (or resume) every cell of a preset and write results.csv, results.md and the plots into ``out``.

    A suite preset (one with ``cells``, :mod:`alr_monai.benchmark_suite`) runs each data cell as a matrix of its
    own in ``out/<cell>`` and adds the suite's tables; its cells name their data, so ``data`` and
    ``imbalance_ratio`` are refused there and ``data_dir`` locates the cells' relative data paths.

    Args:
        preset: benchmark preset JSON.
        out: output folder.
        data: a MedMNIST-layout .npz; None = the preset's ``data`` (default: the embedded subset).
        imbalance_ratio: long-tail the training split of ``data`` to this ratio (default: the preset's).
        shard: "K/N" runs only the K-th (K = 1..N) of N interleaved parts of the cells (see ``_shard_cells``),
            so N processes or machines can share one ``out``; the tables always cover every finished cell, so a
            last run without a shard (which finds everything done) writes the complete results.
        data_dir: suite presets only: the folder of the cells' relative data paths.
    """
    from alr_monai.benchmark_suite import is_suite, run_suite
    from alr_monai.workflow import bundle_file, preset_files, relabel_files, run_workflow

    if is_suite(json.loads(Path(preset).read_text())):
        if data is not None or imbalance_ratio is not None:
            raise ValueError(f"{preset}: a suite names each cell's data; pass --data_dir for relative data paths")
        return run_suite(preset, out, shard, data_dir)
    if data_dir is not None:
        raise ValueError(f"{preset}: --data_dir is for suite presets (with cells); pass the data file as --data")
    config = load_preset(preset)
    out = Path(out)
    data = data if data is not None else config.get("data")
    imbalance_ratio = imbalance_ratio if imbalance_ratio is not None else config.get("imbalance_ratio")
    acquisitions = config.get("acquisitions", ["entropy", "random"])
    rounds = int(config.get("rounds", 5))
    cells = [
        (method, kind, rate, int(seed))
        for kind, rate in noise_settings(config, preset)
        for seed in config["seeds"]
        for method in config["methods"]
    ]
    common = {"max_epochs": config.get("max_epochs", 30), **config.get("overrides", {})}
    if data is not None:
        common["dataset_path"] = str(Path(data).resolve())
    if imbalance_ratio is not None:
        common["imbalance_ratio"] = imbalance_ratio
    recorded = _recorded_rows(out / "results.csv")
    started = time.time()
    for number, (method, kind, rate, seed) in _shard_cells(cells, shard, len(config["methods"])):
        run_dir = _cell_dir(out, method, kind, rate, seed)
        if not run_dir.exists() and _recorded_complete(recorded, (method, kind, rate, seed), acquisitions, rounds):
            continue
        files = [bundle_file("train.json"), *preset_files(METHOD_PRESETS[method])]
        overrides = {
            **common,
            "output_dir": str(run_dir),
            "seed": seed,
            "simulation#noise_kind": kind,
            "simulation#noise_rate": rate,
        }
        label = f"[{number}/{len(cells)}] {method} {kind} noise {rate:g} seed {seed}"
        if not _phase1_done(run_dir, method):
            print(f"{label}: phase 1 ({time.time() - started:.0f} s elapsed)", flush=True)
            step_started = time.time()
            if method == "cleanlab":
                from alr_monai.baselines.cleanlab_peer import run_cleanlab_peer

                run_cleanlab_peer(
                    files,
                    overrides,
                    num_folds=int(config.get("cleanlab_folds", 5)),
                    fold_epochs=config.get("cleanlab_fold_epochs"),
                    log=lambda message, label=label: print(f"{label}: {message}", flush=True),
                )
            elif method == "ours_refit":
                from alr_monai.refit import run_refit

                run_refit(files, overrides, log=lambda message, label=label: print(f"{label}: {message}", flush=True))
            else:
                run_workflow(files, overrides)
            _log_time(out, method, kind, rate, seed, "phase1", time.time() - step_started)
        for acquisition in acquisitions:
            relabel_dir = run_dir / f"relabel_{acquisition}"
            if _relabel_done(relabel_dir, rounds):
                continue
            print(f"{label}: {rounds} rounds of {acquisition} ({time.time() - started:.0f} s elapsed)", flush=True)
            relabel_overrides = {
                **overrides,
                "relabel#dir": str(relabel_dir),
                "relabel#acquisition": acquisition,
                "relabel#num_rounds": rounds,
                "relabel#round_budget": config.get("budget", 100),
                "relabel#recalibration_epochs": config.get("recalibration_epochs", 3),
                **config.get("relabel_overrides", {}),
            }
            step_started = time.time()
            run_workflow(relabel_files(files), relabel_overrides)
            _log_time(out, method, kind, rate, seed, f"relabel_{acquisition}", time.time() - step_started)
    rows = collect_results(out, cells, acquisitions, recorded)
    atomic_write_csv(out / "results.csv", rows, RESULT_COLUMNS, private=False)  # no sample ids
    atomic_write_text(out / "results.md", summary_markdown(rows, rounds, config.get("budget", 100)))
    plot_results(rows, out, _class_names(out, cells))
    print(f"benchmark finished in {time.time() - started:.0f} s: {out / 'results.md'}", flush=True)
    return out


def _shard_cells(cells: list, shard: str | None, group_size: int) -> list[tuple[int, Any]]:
    """(number, cell) pairs of the cells this process runs; numbers stay those of the whole matrix.

    Cells come in groups of ``group_size`` (the methods of one noise rate and seed); the shard offset shifts by
    one per group so that every shard gets a mix of cheap (one network) and costly (two networks) methods.
    """
    numbered = list(enumerate(cells, 1))
    if shard is None:
        return numbered
    try:
        k, n = (int(part) for part in str(shard).split("/"))
    except ValueError:
        raise ValueError(f"shard must look like K/N (e.g. 1/2), got {shard!r}") from None
    if not 1 <= k <= n:
        raise ValueError(f"shard {shard!r}: K must be between 1 and N")
    # with one method per group there is nothing to mix, and the shift would send every cell to one shard
    shift = 1 if group_size > 1 else 0
    return [
        (number, cell) for number, cell in numbered if (number - 1 + shift * ((number - 1) // group_size)) % n == k - 1
    ]


def _log_time(out: Path, method: str, kind: str, rate: float, seed: int, step: str, seconds: float) -> None:
    """Append one finished step's wall time to out/timings.csv (a log: a lost line only loses a timing)."""
    path = out / "timings.csv"
    new = not path.exists()
    with open(path, "a", newline="") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(["method", "noise_kind", "noise_rate", "seed", "step", "seconds"])
        writer.writerow([method, kind, rate, seed, step, f"{seconds:.1f}"])


def _cell_key(method: str, kind: str, rate: float, seed: int) -> tuple[str, str, float, int]:
    """A cell's key in the recorded rows (the rate rounded, so 0.6 read back from a CSV finds 0.6)."""
    return str(method), kind, round(float(rate), 6), int(seed)


def _recorded_rows(path: Path) -> dict[tuple[str, str, float, int], list[dict]]:
    """Rows of an existing results.csv grouped by cell (method, kind, rate, seed); empty when there is none."""
    if not path.is_file():
        return {}
    grouped: dict[tuple[str, str, float, int], list[dict]] = {}
    with open(path, newline="") as handle:
        for row in map(unescape_dict, csv.DictReader(handle)):
            # typed as collect_results types them, so recorded and collected rows pair by seed
            row = {**row, "seed": int(row["seed"]), "noise_rate": float(row["noise_rate"])}
            grouped.setdefault(_cell_key(row["method"], *_setting(row), row["seed"]), []).append(row)
    return grouped


def _recorded_complete(
    recorded: Mapping[tuple, list[dict]], cell: tuple[str, str, float, int], acquisitions: Sequence[str], rounds: int
) -> bool:
    """Whether results.csv already holds a cell's phase 1 and all ``rounds`` rounds of every acquisition."""
    rows = recorded.get(_cell_key(*cell), [])
    if not rows:
        return False
    if not acquisitions:
        return True
    return all(sum(r["acquisition"] == a for r in rows) >= rounds + 1 for a in acquisitions)


def collect_results(
    out: Path,
    cells: Sequence[tuple[str, str, float, int]],
    acquisitions: Sequence[str],
    recorded: Mapping[tuple, list[dict]] | None = None,
) -> list[dict[str, Any]]:
    """One row per cell (method, noise kind, rate, seed), acquisition and round, phase-1 numbers on each row.

    A cell without a run folder takes its rows from ``recorded`` (an earlier results.csv), when it has them.
    """
    from alr_monai.report import phase1_summary

    rows = []
    for method, kind, rate, seed in cells:
        run_dir = _cell_dir(out, method, kind, rate, seed)
        if not run_dir.exists() and recorded:
            rows.extend(recorded.get(_cell_key(method, kind, rate, seed), []))
            continue
        if not _phase1_done(run_dir, method):
            continue
        phase1 = phase1_summary(run_dir)
        base = {
            "method": method,
            "noise_kind": kind,
            "noise_rate": rate,
            "seed": seed,
            "phase1_test_balanced_accuracy": phase1["test_balanced_accuracy"],
            "phase1_test_macro_f1": phase1["test_macro_f1"],
            "selection_precision": phase1["selection_precision"],
            "min_clean_recall": phase1["min_clean_recall"],
            "noise_rate_estimate": phase1["noise_rate_estimate"],
            "noise_rate_true": phase1["noise_rate_true"],
            "label_error_auroc": phase1["label_error_auroc"],
            "label_error_ap": phase1["label_error_ap"],
            "noise_rate_class_mae": phase1["noise_rate_class_mae"],
            "per_class_clean_recall": json.dumps(phase1["per_class_clean_recall"]),
        }
        found = False
        for acquisition in acquisitions:
            path = run_dir / f"relabel_{acquisition}" / "rounds.csv"
            if not path.is_file():
                continue
            found = True
            with open(path, newline="") as handle:
                for round_row in map(unescape_dict, csv.DictReader(handle)):
                    rows.append(
                        {
                            **base,
                            "acquisition": acquisition,
                            **{k: round_row.get(k, "") for k in RESULT_COLUMNS if k in round_row},
                        }
                    )
        if not found:
            # a phase-1-only matrix (no acquisitions, or none finished yet): one row with acquisition ""
            test = phase1["test_balanced_accuracy"]
            rows.append({**base, "acquisition": "", "round": 0, "labels_spent": 0, "test_balanced_accuracy": test})
    return rows


def _relabel_acquisitions(rows: Sequence[dict]) -> list[str]:
    """The acquisitions whose rounds the rows hold ("" marks a phase-1-only row)."""
    return sorted({r["acquisition"] for r in rows} - {""})


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _finite_mean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _mean_std(values: Sequence[float]) -> str:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return "n/a"
    if len(finite) == 1:
        return f"{finite[0]:.3f}"
    return f"{np.mean(finite):.3f} ± {np.std(finite, ddof=1):.3f}"


def _setting(row: Mapping[str, Any]) -> tuple[str, float]:
    """A row's noise setting (kind, rate); rows of files written before kinds were recorded read symmetric."""
    return str(row.get("noise_kind") or "symmetric"), _num(row["noise_rate"])


def _setting_label(kind: str, rate: float) -> str:
    return f"{kind} {rate:g}"


def summary_markdown(rows: Sequence[dict], rounds: int, budget: int) -> str:
    """Mean ± std over seeds per method and noise setting (kind and rate): phase-1 numbers, then each
    acquisition's final numbers."""
    acquisitions = _relabel_acquisitions(rows)
    groups: dict[tuple[str, str, float], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], *_setting(row)), []).append(row)
    header = [
        "method",
        "noise",
        "seeds",
        "phase-1 bal. acc.",
        "phase-1 macro-F1",
        "selection precision",
        "min clean recall",
        "noise estimate (truth)",
        "per-class noise MAE",
        "label-error AUROC (AP)",
    ]
    for acquisition in acquisitions:
        header += [f"{acquisition}: final bal. acc.", f"{acquisition}: gain", f"{acquisition}: yield (pool noise)"]
    table = []
    for (method, kind, rate), group in sorted(groups.items(), key=lambda item: (item[0][1:], item[0][0])):
        per_seed = {r["seed"]: r for r in group}
        seeds = sorted(per_seed)
        first = [per_seed[s] for s in seeds]
        cells = [
            method,
            _setting_label(kind, rate),
            str(len(seeds)),
            _mean_std([_num(r["phase1_test_balanced_accuracy"]) for r in first]),
            _mean_std([_num(r["phase1_test_macro_f1"]) for r in first]),
            _mean_std([_num(r["selection_precision"]) for r in first]),
            _mean_std([_num(r["min_clean_recall"]) for r in first]),
            f"{_mean_std([_num(r['noise_rate_estimate']) for r in first])} ({_mean_std([_num(r['noise_rate_true']) for r in first])})",
            _mean_std([_num(r.get("noise_rate_class_mae")) for r in first]),
            f"{_mean_std([_num(r.get('label_error_auroc')) for r in first])} "
            f"({_mean_std([_num(r.get('label_error_ap')) for r in first])})",
        ]
        for acquisition in acquisitions:
            finals = [r for r in group if r["acquisition"] == acquisition and int(_num(r["round"])) == rounds]
            final_acc = [_num(r["test_balanced_accuracy"]) for r in finals]
            gains = [_num(r["test_balanced_accuracy"]) - _num(r["phase1_test_balanced_accuracy"]) for r in finals]
            yields = _mean_std([_num(r["yield"]) for r in finals])
            pool = _mean_std([_num(r["pool_noise_rate"]) for r in finals])
            cells += [_mean_std(final_acc), _mean_std(gains), f"{yields} ({pool})"]
        table.append(cells)
    lines = [
        f"Mean ± std over seeds. Final = after {rounds} rounds x {budget} labels; gain = final - phase 1 (test "
        "balanced accuracy); yield = label errors found / labels spent, with the noise rate of the pool it was "
        "drawn from after the last round; label-error AUROC (AP) = how well the method's per-sample score ranks "
        "the wrong given labels first over the whole training set (n/a where a method records no such score).",
        "",
        markdown_table(header, table),
    ]
    return "\n".join(lines) + "\n" + _comparison_markdown(rows, rounds)


def _comparison_markdown(rows: Sequence[dict], rounds: int) -> str:
    """Each method against co-teaching (phase 1, paired by seed) and each acquisition's gain against random's."""
    # keys: (method, (kind, rate), seed[, acquisition])
    final = {
        (r["method"], _setting(r), r["seed"], r["acquisition"]): _num(r["test_balanced_accuracy"])
        - _num(r["phase1_test_balanced_accuracy"])
        for r in rows
        if int(_num(r["round"])) == rounds
    }
    phase1 = {(r["method"], _setting(r), r["seed"]): _num(r["phase1_test_balanced_accuracy"]) for r in rows}
    # a gain ratio needs random relabeling as its reference
    measured = {key[3] for key in final}
    acquisitions = sorted(measured - {"random"}) if "random" in measured else []
    auroc = {(r["method"], _setting(r), r["seed"]): _num(r.get("label_error_auroc")) for r in rows}
    header = ["method", "noise", "phase-1 bal. acc. minus co-teaching's (same seeds)", "minus cleanlab's"]
    header += ["label-error AUROC minus cleanlab's"]
    header += [f"{a} gain / random gain" for a in acquisitions]
    table = []

    def paired(values: dict, method: str, setting: tuple, seeds: list, reference: str) -> str:
        if not seeds or any((reference, setting, s) not in values for s in seeds):
            return "n/a"
        return _mean_std([values[(method, setting, s)] - values[(reference, setting, s)] for s in seeds])

    for method, setting in sorted({(key[0], key[1]) for key in phase1}, key=lambda item: (item[1], item[0])):
        seeds = sorted(seed for m, r, seed in phase1 if (m, r) == (method, setting))
        cells = [
            method,
            _setting_label(*setting),
            paired(phase1, method, setting, seeds, "coteaching"),
            paired(phase1, method, setting, seeds, "cleanlab"),
            paired(auroc, method, setting, seeds, "cleanlab"),
        ]
        for acquisition in acquisitions:
            pairs = [
                (final[(method, setting, s, acquisition)], final[(method, setting, s, "random")])
                for s in seeds
                if (method, setting, s, acquisition) in final and (method, setting, s, "random") in final
            ]
            random_gain = _finite_mean([b for _, b in pairs])
            ratio = _finite_mean([a for a, _ in pairs]) / random_gain if pairs and random_gain > 0 else float("nan")
            cells.append("n/a (random gained nothing)" if pairs and not random_gain > 0 else _mean_std([ratio]))
        table.append(cells)
    lines = [
        "",
        "Paired comparisons: the phase-1 difference is taken seed by seed (mean ± std); the gain ratio is the mean "
        "gain of an acquisition over the mean gain of random relabeling for the same labels and seeds.",
        "",
        markdown_table(header, table),
    ]
    return "\n".join(lines) + "\n" + _versus_best_markdown(rows, rounds)


def _versus_best_markdown(rows: Sequence[dict], rounds: int, method: str = "ours") -> str:
    """After the last round: ``method`` with each acquisition against the other methods' final models.

    Two baselines, both paired by seed: the best other configuration (method and acquisition) by its mean over
    seeds, which is what a user could pick from a published table, and each seed's best other run, the strictest
    baseline (a maximum over every configuration picked with hindsight, so it is biased upwards).
    """
    final = {
        (r["method"], _setting(r), r["seed"], r["acquisition"]): _num(r["test_balanced_accuracy"])
        for r in rows
        if int(_num(r["round"])) == rounds
    }
    others = sorted({key[0] for key in final} - {method})
    if not others or not any(key[0] == method for key in final):
        return ""
    acquisitions = sorted({key[3] for key in final if key[0] == method})
    table = []
    for setting in sorted({key[1] for key in final if key[0] == method}):
        rival_runs = {(name, seed, acq): v for (name, at, seed, acq), v in final.items() if at == setting}
        rival_runs = {key: v for key, v in rival_runs.items() if key[0] != method}
        by_configuration: dict[tuple[str, str], list[float]] = {}
        best_run: dict[str, float] = {}  # seed -> the best final model of any other configuration
        for (name, seed, acquired), value in rival_runs.items():
            by_configuration.setdefault((name, acquired), []).append(value)
            best_run[seed] = max(value, best_run.get(seed, -math.inf))
        if not by_configuration:
            continue
        best_name, best_acquisition = max(by_configuration, key=lambda c: _finite_mean(by_configuration[c]))
        cells = [
            _setting_label(*setting),
            f"{best_name} + {best_acquisition} ({_finite_mean(by_configuration[(best_name, best_acquisition)]):.3f})",
        ]
        strictest = []
        for acquisition in acquisitions:
            ours = {
                seed: v
                for (name, at, seed, acq), v in final.items()
                if (name, at, acq) == (method, setting, acquisition)
            }
            versus_configuration = [
                ours[seed] - rival_runs[(best_name, seed, best_acquisition)]
                for seed in sorted(ours)
                if (best_name, seed, best_acquisition) in rival_runs
            ]
            versus_run = [ours[seed] - best_run[seed] for seed in sorted(ours) if seed in best_run]
            cells.append(_mean_std(versus_configuration) if versus_configuration else "n/a")
            strictest.append(f"{_mean_std(versus_run)} (n = {len(versus_run)})" if versus_run else "n/a")
        table.append(cells + strictest)
    header = ["noise", "best other configuration (mean)"]
    header += [f"{method} ({a}) minus it" for a in acquisitions]
    header += [f"{method} ({a}) minus each seed's best other run" for a in acquisitions]
    lines = [
        "",
        f"After round {rounds}, {method}'s test balanced accuracy minus the other methods' ({', '.join(others)}, any "
        "acquisition), paired by seed (mean ± std): the best other configuration by its mean over seeds, and, "
        "stricter, the best other run of each seed (picked with hindsight):",
        "",
        markdown_table(header, table),
    ]
    return "\n".join(lines) + "\n"


def _class_names(out: Path, cells: Sequence[tuple[str, str, float, int]]) -> list[str] | None:
    """Class names from the first finished cell's classes.json (None when no cell has one)."""
    for method, kind, rate, seed in cells:
        path = _cell_dir(out, method, kind, rate, seed) / "classes.json"
        if path.is_file():
            return list(json.loads(path.read_text())["class_names"])
    return None


def _save(figure, axis, path: Path, xlabel: str, ylabel: str, title: str) -> Path:
    from alr_monai.plots import plt

    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title, fontsize=9)
    # outside the axes, so the legend never covers bars or lines
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    figure.tight_layout()
    figure.savefig(path, bbox_inches="tight")
    plt.close(figure)
    return path


def _finite_std(values: Sequence[float]) -> float:
    """Sample standard deviation of the finite values (0 with fewer than two)."""
    finite = [v for v in values if not math.isnan(v)]
    return float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0


def _per_seed(rows: Sequence[dict]) -> list[dict]:
    """One row per seed (the phase-1 numbers repeat on every acquisition's and round's row)."""
    return list({r["seed"]: r for r in rows}.values())


def plot_results(rows: Sequence[dict], out: Path, class_names: Sequence[str] | None = None) -> list[Path]:
    """PNG plots per noise setting: per-class clean recall per method, balanced accuracy and yield vs labels spent.

    Bars and lines are means over seeds with the sample standard deviation as error bars (bands for lines);
    the curves against labels spent exist only where relabel rounds ran. Files are tagged by setting
    (:func:`_setting_tag`): ``clean_recall_noise0.6.png`` for symmetric noise 0.6, ``clean_recall_pairflip0.3.png``
    for pair-flip noise 0.3.
    """
    from alr_monai.plots import plt

    if not rows:
        return []
    written = []
    methods = sorted({r["method"] for r in rows})
    acquisitions = _relabel_acquisitions(rows)
    for kind, rate in sorted({_setting(r) for r in rows}):
        tag, name = _setting_tag(kind, rate), _setting_label(kind, rate)
        in_setting = [r for r in rows if _setting(r) == (kind, rate)]
        figure, axis = plt.subplots(figsize=(8, 3.8), dpi=90)
        width = 0.8 / max(len(methods), 1)
        for m, method in enumerate(methods):
            recalls = [
                json.loads(r["per_class_clean_recall"])
                for r in _per_seed([r for r in in_setting if r["method"] == method])
            ]
            recalls = [[_num(v) for v in rec] for rec in recalls if rec]
            if not recalls:
                continue
            values = np.array(recalls, dtype=float)
            mean = np.nanmean(values, axis=0)
            spread = np.array([_finite_std(values[:, c]) for c in range(values.shape[1])])
            positions = np.arange(len(mean)) + (m - (len(methods) - 1) / 2) * width
            axis.bar(positions, mean, width, yerr=spread, capsize=2, label=f"{method} (n={len(values)})")
            labels = list(class_names) if class_names and len(class_names) == len(mean) else range(len(mean))
            axis.set_xticks(np.arange(len(mean)), labels, rotation=30, ha="right", fontsize=7)
        axis.set_ylim(0, 1.05)
        title = f"Phase-1 per-class clean recall (mean ± std over seeds), noise {name}"
        xlabel = "true class" if class_names else "class index"
        written.append(_save(figure, axis, out / f"clean_recall_{tag}.png", xlabel, "clean recall", title))
        if not acquisitions:
            continue
        for metric, ylabel in (("test_balanced_accuracy", "test balanced accuracy"), ("yield", "yield")):
            figure, axis = plt.subplots(figsize=(7, 3.8), dpi=90)
            for colour, method in enumerate(methods):
                for style, acquisition in enumerate(acquisitions):
                    series: dict[int, list[float]] = {}
                    for r in in_setting:
                        if r["method"] == method and r["acquisition"] == acquisition:
                            series.setdefault(int(_num(r["labels_spent"])), []).append(_num(r[metric]))
                    if series:
                        xs = sorted(series)
                        means = np.array([_finite_mean(series[x]) for x in xs])
                        spreads = np.array([_finite_std(series[x]) for x in xs])
                        # one colour per method, one line style per acquisition
                        axis.plot(
                            xs,
                            means,
                            marker="o",
                            color=f"C{colour}",
                            linestyle=("-", "--", ":", "-.")[style % 4],
                            label=f"{method}/{acquisition}",
                        )
                        axis.fill_between(xs, means - spreads, means + spreads, color=f"C{colour}", alpha=0.12)
            path = out / f"{metric}_vs_labels_{tag}.png"
            title = f"{ylabel} vs labels spent (mean ± std over seeds), noise {name}"
            written.append(_save(figure, axis, path, "labels spent", ylabel, title))
    return written
