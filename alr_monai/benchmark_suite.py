"""The benchmark suite: one preset, several data cells that differ in character (data set, long tail, binary or
many classes, noise model, training length), each run as an ordinary benchmark matrix.

A suite preset is a benchmark preset (``configs/benchmarks/``) with a ``cells`` list; the methods, seeds,
acquisitions, rounds, budget, cleanlab settings, ``overrides`` and ``relabel_overrides`` are shared, and each cell
adds its own data and noise:

``name`` (required, a folder name), ``data`` (a MedMNIST-layout .npz, relative to ``data_dir``; null = the embedded
subset), ``imbalance_ratio``, ``class_map`` (the new class of each source class, null drops one: a binary split),
``max_per_class`` (a cap on the largest training class: the few-images regime), ``noise_settings`` (``[[kind,
rate], ...]``) or ``noise`` (one ``[kind, rate]``), and optionally ``max_epochs``, ``budget``,
``cleanlab_fold_epochs``, ``overrides`` and ``relabel_overrides`` (merged over the shared ones) and ``_comment``.

Each cell runs as its own matrix in ``out/<name>/`` (its preset written there as ``preset.json``; its
``results.csv``, ``results.md``, ``timings.csv`` and plots as :func:`alr_monai.benchmark.run_benchmark` writes
them), so it is resumable and sharded (``--shard K/N`` runs the K-th part of every cell) exactly like a matrix.
The suite then writes ``out/results.csv`` (every cell's rows with a leading ``cell`` column: one row per method x
cell x seed x round), ``out/results.md`` (the cells, a per-cell table of each method, and per method the mean
over cells and the worst cell) and ``out/by_cell_*.png``.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from alr_monai.benchmark import _finite_mean, _mean_std, _num
from alr_monai.tables import markdown_table
from alr_monai.utils import atomic_write_csv, atomic_write_json, atomic_write_text

# preset keys every cell shares (copied into each cell's matrix preset)
SHARED_KEYS = (
    "seeds",
    "methods",
    "max_epochs",
    "cleanlab_folds",
    "cleanlab_fold_epochs",
    "acquisitions",
    "rounds",
    "budget",
    "recalibration_epochs",
)
# cell keys that become a cell matrix's preset keys (the rest of CELL_KEYS are bundle overrides or merged)
CELL_PRESET_KEYS = ("max_epochs", "budget", "cleanlab_fold_epochs", "noise_settings")
CELL_KEYS = (
    "name",
    "data",
    "imbalance_ratio",
    "class_map",
    "max_per_class",
    "noise",
    "noise_settings",
    "max_epochs",
    "budget",
    "cleanlab_fold_epochs",
    "overrides",
    "relabel_overrides",
    "_comment",
)


def is_suite(preset: Mapping[str, Any]) -> bool:
    """Whether a benchmark preset is a suite (has ``cells``)."""
    return "cells" in preset


def cell_presets(
    suite: Mapping[str, Any], source: str | Path = "preset", data_dir: str | Path | None = None
) -> list[tuple[str, dict]]:
    """(name, matrix preset) of every cell of a suite, in order, checked.

    Args:
        suite: the suite preset.
        source: its file, for messages.
        data_dir: the folder relative cell ``data`` paths are found in (default: the suite's ``data_dir`` key,
            else the current folder).

    Raises:
        ValueError: naming ``source``, the cell and the key, for a malformed cell, an unknown key, a duplicate
            name, shared matrix keys the suite may not set (``data``, ``noise_*``), or a missing data file.
    """
    from alr_monai.benchmark import noise_settings

    cells = suite["cells"]
    if not isinstance(cells, list) or not cells:
        raise ValueError(f"{source}: cells must be a non-empty list of cell objects")
    clashing = sorted({"data", "imbalance_ratio", "noise_settings", "noise_kind", "noise_rates"} & set(suite))
    if [key for key in clashing if suite[key] is not None]:
        raise ValueError(f"{source}: a suite sets data and noise per cell; remove the top-level {clashing}")
    folder = Path(data_dir if data_dir is not None else suite.get("data_dir") or ".")
    presets, names = [], set()
    for position, cell in enumerate(cells, 1):
        where = f"{source}: cell {position}"
        if not isinstance(cell, dict) or not isinstance(cell.get("name"), str) or not cell["name"].strip():
            raise ValueError(f"{where}: every cell is an object with a non-empty 'name'")
        name = cell["name"]
        where = f"{source}: cell {name!r}"
        if not all(ch.isalnum() or ch in "_-." for ch in name) or name in names:
            raise ValueError(f"{where}: a cell name must be unique and use only letters, digits, '_', '-', '.'")
        names.add(name)
        unknown = sorted(set(cell) - set(CELL_KEYS))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; a cell takes {list(CELL_KEYS)}")
        if ("noise" in cell) == ("noise_settings" in cell):
            raise ValueError(f"{where}: give either noise ([kind, rate]) or noise_settings ([[kind, rate], ...])")
        settings = noise_settings({"noise_settings": cell.get("noise_settings", [cell.get("noise")])}, where)
        preset: dict[str, Any] = {key: suite[key] for key in SHARED_KEYS if key in suite}
        preset["_comment"] = cell.get("_comment", f"cell {name} of {source}")
        preset["noise_settings"] = [list(setting) for setting in settings]
        for key in ("max_epochs", "budget", "cleanlab_fold_epochs"):
            if key in cell:
                preset[key] = cell[key]
        data = cell.get("data")
        if data is not None:
            path = Path(data) if Path(data).is_absolute() else folder / data
            if not path.is_file():
                raise ValueError(
                    f"{where}: data file {path} not found (relative paths are read from data_dir: pass "
                    "--data_dir, e.g. --data_dir ../shared/data)"
                )
            data = str(path.resolve())
        preset["data"] = data
        preset["imbalance_ratio"] = cell.get("imbalance_ratio")
        overrides = {**suite.get("overrides", {}), **cell.get("overrides", {})}
        for key in ("class_map", "max_per_class"):
            if cell.get(key) is not None:
                overrides[key] = cell[key]
        preset["overrides"] = overrides
        preset["relabel_overrides"] = {**suite.get("relabel_overrides", {}), **cell.get("relabel_overrides", {})}
        presets.append((name, preset))
    return presets


def run_suite(
    preset: str | Path,
    out: str | Path = "runs/suite",
    shard: str | None = None,
    data_dir: str | Path | None = None,
) -> Path:
    """Run (or resume) every cell of a suite preset, then write the suite's results.csv, results.md and plots.

    Args:
        preset: the suite preset JSON.
        out: output folder; cell ``name`` runs in ``out/name``.
        shard: "K/N": the K-th of N interleaved parts of every cell (see :func:`alr_monai.benchmark.run_benchmark`).
        data_dir: the folder of the cells' relative data paths (default: the preset's ``data_dir``, else ".").
    """
    from alr_monai.benchmark import load_preset, run_benchmark

    suite = json.loads(Path(preset).read_text())
    cells = cell_presets(suite, preset, data_dir)
    out = Path(out)
    for name, cell in cells:
        cell_dir = out / name
        cell_dir.mkdir(parents=True, exist_ok=True)
        cell_file = atomic_write_json(cell_dir / "preset.json", cell)
        load_preset(cell_file)  # every cell checked (methods, noise, cleanlab) before any runs
    for number, (name, _) in enumerate(cells, 1):
        print(f"suite cell {number}/{len(cells)}: {name}", flush=True)
        run_benchmark(out / name / "preset.json", out / name, shard=shard)
    rows = collect_suite(out, [name for name, _ in cells])
    from alr_monai.benchmark import RESULT_COLUMNS

    atomic_write_csv(out / "results.csv", rows, ["cell", *RESULT_COLUMNS])
    rounds = int(suite.get("rounds", 5))
    atomic_write_text(out / "results.md", suite_markdown(rows, cells, rounds))
    plot_suite(rows, out, [name for name, _ in cells], rounds)
    print(f"suite finished: {out / 'results.md'}", flush=True)
    return out


def collect_suite(out: Path, names: Sequence[str]) -> list[dict[str, Any]]:
    """Every cell's results.csv rows, with the cell's name first (cells not run yet have none)."""
    rows = []
    for name in names:
        path = out / name / "results.csv"
        if not path.is_file():
            continue
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                rows.append({"cell": name, **row})
    return rows


# the one-data-set tables' number helpers, so both read numbers and blanks alike
_mean = _finite_mean


def _per_seed(rows: Sequence[dict], column: str) -> list[float]:
    """One value per seed of a phase-1 column (repeated on every round's row)."""
    return [_num(r[column]) for r in {r["seed"]: r for r in rows}.values()]


def measures(rows: Sequence[dict], rounds: int) -> dict[str, list[float]]:
    """Per-seed values of the suite's headline measures for one method in one cell.

    ``phase-1 bal. acc.``, ``noise estimate abs. error`` (overall), ``per-class noise MAE``, ``min clean recall``
    and, per acquisition, ``<acquisition>: final bal. acc.`` after ``rounds`` rounds and its ``gain over phase 1``
    (the issue's targets).
    """
    found = {
        "phase-1 bal. acc.": _per_seed(rows, "phase1_test_balanced_accuracy"),
        "noise estimate abs. error": [
            abs(e - t)
            for e, t in zip(_per_seed(rows, "noise_rate_estimate"), _per_seed(rows, "noise_rate_true"), strict=True)
        ],
        "per-class noise MAE": _per_seed(rows, "noise_rate_class_mae"),
        "min clean recall": _per_seed(rows, "min_clean_recall"),
    }
    for acquisition in sorted({r["acquisition"] for r in rows} - {""}):
        finals = {
            r["seed"]: _num(r["test_balanced_accuracy"])
            for r in rows
            if r["acquisition"] == acquisition and int(_num(r["round"])) == rounds
        }
        phase1 = {r["seed"]: _num(r["phase1_test_balanced_accuracy"]) for r in rows}
        found[f"{acquisition}: final bal. acc."] = list(finals.values())
        found[f"{acquisition}: gain over phase 1"] = [finals[seed] - phase1[seed] for seed in finals]
    return found


# measures where lower is better (the worst cell is the highest)
LOWER_IS_BETTER = ("noise estimate abs. error", "per-class noise MAE")


def suite_markdown(rows: Sequence[dict], cells: Sequence[tuple[str, dict]], rounds: int) -> str:
    """The suite's results.md: the cells, each measure per method and cell, and per method the mean over cells
    and the worst cell."""
    names = [name for name, _ in cells]
    cell_rows = [
        [
            name,
            Path(cell["data"]).name if cell.get("data") else "embedded",
            "n/a" if cell.get("imbalance_ratio") is None else f"{cell['imbalance_ratio']:g}",
            json.dumps(cell["overrides"].get("class_map")) if "class_map" in cell["overrides"] else "as released",
            str(cell["overrides"].get("max_per_class", "")) or "-",
            ", ".join(f"{kind} {rate:g}" for kind, rate in cell["noise_settings"]),
            str(cell.get("max_epochs", "")),
            cell.get("_comment", ""),
        ]
        for name, cell in cells
    ]
    lines = [
        "# Benchmark suite",
        "",
        "Every number is the mean over seeds of a cell; the mean over cells weights each cell equally; the worst "
        "cell is the lowest (highest for the estimate's error). Each cell's own tables (per noise setting, paired "
        "comparisons) are in `<cell>/results.md`, its plots beside them.",
        "",
        markdown_table(
            ["cell", "data", "imbalance ratio", "class map", "max per class", "noise", "epochs", "character"],
            cell_rows,
        ),
        "",
    ]
    methods = sorted({r["method"] for r in rows})
    by_cell: dict[tuple[str, str], dict[str, list[float]]] = {}
    for name in names:
        for method in methods:
            group = [r for r in rows if r["cell"] == name and r["method"] == method]
            if group:
                by_cell[(name, method)] = measures(group, rounds)
    measure_names: list[str] = []
    for found in by_cell.values():
        measure_names += [m for m in found if m not in measure_names]
    summary = []
    for method in methods:
        for measure in measure_names:
            values = {
                name: _mean(by_cell[(name, method)].get(measure, [])) for name in names if (name, method) in by_cell
            }
            finite = {name: v for name, v in values.items() if not math.isnan(v)}
            if not finite:
                continue
            pick = max if measure in LOWER_IS_BETTER else min
            worst = pick(finite, key=finite.get)
            summary.append(
                [
                    method,
                    measure,
                    f"{np.mean(list(finite.values())):.3f}",
                    f"{finite[worst]:.3f} ({worst})",
                    f"{len(finite)}/{len(names)}",
                ]
            )
    lines += [
        "## Mean over cells and worst cell",
        "",
        markdown_table(["method", "measure", "mean over cells", "worst cell", "cells measured"], summary),
        "",
    ]
    for measure in measure_names:
        table = []
        for method in methods:
            table.append(
                [method]
                + [
                    _mean_std(by_cell[(name, method)].get(measure, [])) if (name, method) in by_cell else "n/a"
                    for name in names
                ]
            )
        lines += [f"## {measure} per cell (mean ± std over seeds)", "", markdown_table(["method", *names], table), ""]
    return "\n".join(lines)


def plot_suite(rows: Sequence[dict], out: Path, names: Sequence[str], rounds: int) -> list[Path]:
    """Bars per cell and method (mean ± std over seeds): ``by_cell_phase1.png`` and, per acquisition,
    ``by_cell_final_<acquisition>.png``."""
    from alr_monai.plots import plt

    if not rows:
        return []
    methods = sorted({r["method"] for r in rows})
    panels = [("phase1", "phase-1 bal. acc.")]
    panels += [(f"final_{a}", f"{a}: final bal. acc.") for a in sorted({r["acquisition"] for r in rows} - {""})]
    written = []
    for tag, measure in panels:
        figure, axis = plt.subplots(figsize=(max(6.0, 1.1 * len(names) + 2), 3.8), dpi=90)
        width = 0.8 / max(len(methods), 1)
        for m, method in enumerate(methods):
            means, spreads = [], []
            for name in names:
                group = [r for r in rows if r["cell"] == name and r["method"] == method]
                values = [v for v in measures(group, rounds).get(measure, []) if not math.isnan(v)] if group else []
                means.append(float(np.mean(values)) if values else float("nan"))
                spreads.append(float(np.std(values, ddof=1)) if len(values) > 1 else 0.0)
            positions = np.arange(len(names)) + (m - (len(methods) - 1) / 2) * width
            axis.bar(positions, means, width, yerr=spreads, capsize=2, label=method)
        axis.set_xticks(np.arange(len(names)), list(names), rotation=30, ha="right", fontsize=7)
        axis.set_ylim(0, 1.05)
        axis.set_ylabel("test balanced accuracy")
        axis.set_title(f"{measure} per cell (mean ± std over seeds)", fontsize=9)
        axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
        figure.tight_layout()
        path = out / f"by_cell_{tag}.png"
        figure.savefig(path, bbox_inches="tight")
        plt.close(figure)
        written.append(path)
    return written
