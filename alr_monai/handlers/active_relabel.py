"""Phase 2 driver: active relabel rounds inside a recalibration training run."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from ignite.engine import Engine, Events
from torch.utils.data import DataLoader, Dataset, Subset

from alr_monai.engines.coteaching import CoTeachingEvents
from alr_monai.evaluation import evaluate_loader
from alr_monai.relabel.acquire import acquire
from alr_monai.relabel.expert import OracleExpert
from alr_monai.relabel.state import RoundState, apply_answers_file, start_round
from alr_monai.relabel.training import LabelStore, SubsetShuffleSampler
from alr_monai.utils import atomic_torch_save, atomic_write_csv, atomic_write_text, read_csv

RECIPES = ("coteaching", "trusted")
MODES = ("simulation", "interactive")
ROUND_COLUMNS = [
    "round",
    "labels_spent",
    "labels_changed",
    "excluded",
    "errors_found",
    "yield",
    "pool_noise_rate",
    "val_balanced_accuracy",
    "test_balanced_accuracy",
    "test_macro_f1",
]


def read_phase1_trusted(selection_csv: str | Path, ids: Sequence[str]) -> list[bool]:
    """The ``trusted`` column of phase 1's selection.csv, checked against the training ids."""
    path = Path(selection_csv)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run phase 1 (train.json) into the same output_dir first")
    header, rows = read_csv(path)
    if "trusted" not in header or "id" not in header:
        raise ValueError(f"{path}: expected columns id and trusted, found {header}")
    if [r["id"] for r in rows] != [str(i) for i in ids]:
        raise ValueError(f"{path}: its ids do not match this training set; was phase 1 run on other data?")
    return [r["trusted"] == "1" for r in rows]


def phase1_forget_rate(output_dir: str | Path) -> float:
    """The forget rate phase 1 ended with (its noise-rate estimate, or the configured rate)."""
    path = Path(output_dir) / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run phase 1 (train.json) into the same output_dir first")
    metrics = json.loads(path.read_text())["last"]["train"]
    return float(metrics.get("forget_rate", 0.0))


def load_phase1_model(network: torch.nn.Module, path: str | Path, device=None) -> torch.nn.Module:
    """Load phase 1's best-validation model (a state dict, or ``{"model": state_dict}``) into ``network``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run phase 1 (train.json) into the same output_dir first")
    state = torch.load(path, map_location=device, weights_only=True)
    try:
        network.load_state_dict(state["model"] if "model" in state else state)
    except RuntimeError as error:
        raise ValueError(
            f"{path} does not fit this network ({error}); phase 2 must use the same network settings as "
            "phase 1 (network_factory, network_def#num_peers and network_def#dropout)"
        ) from error
    return network


class ActiveRelabelRoundHandler:
    """Runs the relabel rounds of phase 2 inside a recalibration trainer.

    The trainer runs ``num_rounds * recalibration_epochs`` epochs. At the start of each round's first epoch the
    handler ranks the pool (samples neither trusted by phase 1 nor answered by the expert) with the current
    model, writes ``queries/round_<k>.csv``, and gets answers: in simulation the oracle writes
    ``answers/round_<k>.csv``; interactively the run stops and says which file to fill and how to resume. The
    answers go through the crash-safe :func:`apply_answers_file` (audit trail, labels_cleaned.csv, state last),
    then the label store and sampler follow the new labels and the round's recalibration epochs train. After a
    round's last epoch the model is evaluated on the validation and test sets and the round table is written.

    Checkpoint choice: after every recalibration epoch the model is scored on the validation set; at the end
    of a round the weights with the best validation balanced accuracy seen so far (the phase-1 model counts)
    are restored, so a round whose training did not help on validation does not make the model worse. The
    test set is only reported.

    Recalibration recipes:
        "trusted" (default): plain training on the trusted set (phase-1 selection with its given labels, plus
            every expert answer), as the reference code does, but each round ends on the best-validation model.
        "coteaching": keep co-teaching on every non-excluded sample with the current labels; expert-verified
            samples are always kept, and the forget rate shrinks as errors are fixed
            (phase-1 rate x N - labels changed) / N.

    Args:
        relabel_dir: folder for state.json, queries/, answers/, audit.csv, labels_cleaned.csv, rounds.csv.
        class_names: names by class index.
        ids: training ids by index.
        given_labels: labels as given, by index.
        phase1_trusted: phase 1's clean selection, by index.
        label_store: the labels the trainer reads.
        sampler: the trainer's sampler.
        scoring_dataset: the training set with deterministic (evaluation) transforms, same indices.
        val_loader: loader of the validation set (round metrics; model choice uses validation only).
        test_loader: loader of the held-out test set (reported, never used to choose), or None.
        acquisition: acquisition function name.
        round_budget: labels per round.
        num_rounds: rounds to run.
        recalibration_epochs: training epochs after each round.
        mode: "simulation" (``oracle`` answers) or "interactive" (a person answers).
        oracle: the simulated expert, simulation only.
        true_labels: simulation only, for the errors-found and pool-noise columns (a metric, never trained on).
        recipe: "trusted" or "coteaching".
        base_forget_rate: the forget rate phase 1 ended with.
        image_paths: image path per index for the query file (optional).
        patient_ids: patient id per index for the query file (optional).
        seed: seed for random acquisition (per round, so a resume picks the same samples).
        mc_samples: MC-dropout passes for BALD.
        batch_size: inference batch size.
        resume_command: the command a person runs after filling the answers file.
        summary_writer: TensorBoard writer for round scalars (optional).
        device: inference device (defaults to the trainer's).
    """

    def __init__(
        self,
        relabel_dir: str | Path,
        class_names: Sequence[str],
        ids: Sequence[str],
        given_labels: Sequence[int],
        phase1_trusted: Sequence[bool],
        label_store: LabelStore,
        sampler: SubsetShuffleSampler,
        scoring_dataset: Dataset,
        val_loader: DataLoader,
        test_loader: DataLoader | None = None,
        acquisition: str = "entropy",
        round_budget: int = 100,
        num_rounds: int = 5,
        recalibration_epochs: int = 2,
        mode: str = "simulation",
        oracle: OracleExpert | None = None,
        true_labels: Sequence[int] | None = None,
        recipe: str = "trusted",
        base_forget_rate: float = 0.0,
        image_paths: Sequence[str] | None = None,
        patient_ids: Sequence[str] | None = None,
        seed: int = 0,
        mc_samples: int = 10,
        batch_size: int = 256,
        resume_command: str = "alr relabel",
        summary_writer=None,
        device: str | torch.device | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}")
        if mode == "simulation" and oracle is None:
            raise ValueError("simulation mode needs an oracle (relabel#oracle); use mode 'interactive' for a person")
        if round_budget < 1 or num_rounds < 1 or recalibration_epochs < 1:
            raise ValueError("round_budget, num_rounds and recalibration_epochs must all be >= 1")
        self.dir = Path(relabel_dir)
        self.state_path = self.dir / "state.json"
        self.audit_path = self.dir / "audit.csv"
        self.labels_path = self.dir / "labels_cleaned.csv"
        self.class_names = list(class_names)
        self.ids = [str(i) for i in ids]
        self.given_labels = [int(label) for label in given_labels]
        self.phase1_trusted = [bool(t) for t in phase1_trusted]
        self.label_store = label_store
        self.sampler = sampler
        self.scoring_dataset = scoring_dataset
        self.val_loader = val_loader
        self.test_loader = test_loader
        self.acquisition = acquisition
        self.round_budget = round_budget
        self.num_rounds = num_rounds
        self.recalibration_epochs = recalibration_epochs
        self.mode = mode
        self.oracle = oracle
        self.true_labels = None if true_labels is None else [int(t) for t in true_labels]
        if self.true_labels is not None and len(self.true_labels) != len(self.ids):
            raise ValueError(f"{len(self.true_labels)} true labels for {len(self.ids)} training samples")
        self.recipe = recipe
        self.base_forget_rate = float(base_forget_rate)
        self.image_paths = None if image_paths is None else [str(p) for p in image_paths]
        self.patient_ids = None if patient_ids is None else [str(p) for p in patient_ids]
        self.seed = seed
        self.mc_samples = mc_samples
        self.batch_size = batch_size
        self.resume_command = resume_command
        self.writer = summary_writer
        self.device = device
        self.waiting_for: Path | None = None
        self.best_val = float("-inf")
        self.best_weights: dict[str, torch.Tensor] = {}
        self.logger = logging.getLogger(__name__)

    # ------------------------------------------------------------------------------------------ paths
    def query_path(self, round_index: int) -> Path:
        return self.dir / "queries" / f"round_{round_index}.csv"

    def answers_path(self, round_index: int) -> Path:
        return self.dir / "answers" / f"round_{round_index}.csv"

    # ------------------------------------------------------------------------------------------ events
    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(CoTeachingEvents.LOSSES_COMPUTED, self._force_keep_verified)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _device(self, engine: Engine):
        return self.device if self.device is not None else engine.state.device

    def _started(self, engine: Engine) -> None:
        self.waiting_for = None
        if not self.state_path.exists():
            state = RoundState.initial(self.ids, self.given_labels, self.phase1_trusted, self.class_names)
            state.save(self.state_path)
        state = RoundState.load(self.state_path)
        if state.ids != self.ids:
            raise ValueError(f"{self.state_path} belongs to another training set (ids differ)")
        if not state.baseline_metrics:
            # Round 0: the phase-1 model before any expert label.
            state.record_metrics(0, self._evaluate(engine, state))
            state.save(self.state_path)
            self._write_round_table(state)
        if not self.best_weights:
            self._remember(engine, state.baseline_metrics["val_balanced_accuracy"])
        self._sync(engine, state)

    def _epoch_started(self, engine: Engine) -> None:
        self.sampler.set_epoch(engine.state.epoch)
        if (engine.state.epoch - 1) % self.recalibration_epochs:
            return
        round_index = (engine.state.epoch - 1) // self.recalibration_epochs + 1
        state = RoundState.load(self.state_path)
        if state.round < round_index:
            if not self._run_round(engine, state, round_index):
                return
            state = RoundState.load(self.state_path)
        self._sync(engine, state)

    def _run_round(self, engine: Engine, state: RoundState, round_index: int) -> bool:
        """Query and apply round ``round_index``; False if the run must stop to wait for a person."""
        query_path, answers_path = self.query_path(round_index), self.answers_path(round_index)
        if state.pending_round != round_index:
            rows = self._query_rows(engine, state, round_index)
            if not rows:
                self.logger.info(f"round {round_index}: the pool is empty, nothing to ask")
                engine.terminate()
                return False
            start_round(self.state_path, query_path, round_index, rows)
            self.logger.info(f"round {round_index}: wrote {len(rows)} queries to {query_path}")
        if self.mode == "simulation" and not answers_path.exists():
            self.oracle.fill_query_file(query_path, answers_path, round_index)
        if not answers_path.exists():
            self.waiting_for = answers_path
            message = (
                f"\nRound {round_index} is waiting for the expert.\n"
                f"  1. Open {query_path} and fill the expert_label column (a class name or index; leave blank to "
                f"skip; 'exclude' to drop the image).\n"
                f"  2. Save it as {answers_path} (or run: alr answer <your file> --run_dir {self.dir.parent}).\n"
                f"  3. Resume with: {self.resume_command}\n"
            )
            print(message, flush=True)
            engine.terminate()
            return False
        source = "oracle" if self.mode == "simulation" else "expert"
        state = apply_answers_file(
            self.state_path, self.audit_path, self.labels_path, answers_path, round_index, source=source
        )
        entry = state.history[-1]
        self.logger.info(
            f"round {round_index}: {entry['labels_spent']} labels spent, {entry['labels_changed']} changed, "
            f"{entry['excluded']} excluded, {entry['skipped']} skipped"
        )
        return True

    def _query_rows(self, engine: Engine, state: RoundState, round_index: int) -> list[dict]:
        pool = state.pool_indices()
        if not pool:
            return []
        device = self._device(engine)
        pool_loader = self._loader(pool)
        trusted = [i for i, t in enumerate(state.trusted) if t]
        labelled_loader = self._loader(trusted) if self.acquisition == "coreset" and trusted else None
        generator = torch.Generator().manual_seed(self.seed * 1000 + round_index)
        picked = acquire(
            self.acquisition,
            engine.network,
            pool_loader,
            min(self.round_budget, len(pool)),
            device,
            labelled_loader=labelled_loader,
            mc_samples=self.mc_samples,
            generator=generator,
        )
        rows = []
        for rank, index in enumerate(picked.indices):
            rows.append(
                {
                    "id": self.ids[index],
                    "image": self.image_paths[index] if self.image_paths else "",
                    "given_label": state.current_labels[index],
                    "predicted_label": picked.predicted_labels[rank],
                    "predicted_probability": picked.predicted_probabilities[rank],
                    "score": picked.scores[rank],
                    "patient_id": self.patient_ids[index] if self.patient_ids else "",
                }
            )
        return rows

    def _loader(self, indices: Sequence[int]) -> DataLoader:
        return DataLoader(Subset(self.scoring_dataset, list(indices)), batch_size=self.batch_size, shuffle=False)

    def _sync(self, engine: Engine, state: RoundState) -> None:
        """Make the trainer follow the state: labels, verified mask, the subset trained on and the forget rate."""
        verified = [source in ("expert", "oracle") for source in state.source]
        self.label_store.update(state.current_labels, verified)
        active = [i for i, label in enumerate(state.current_labels) if label >= 0]
        if self.recipe == "trusted":
            subset = [i for i in active if state.trusted[i]]
            engine.forget_rate = 0.0
        else:
            subset = active
            fixed = sum(entry["labels_changed"] for entry in state.history)
            remaining_noise = self.base_forget_rate * len(self.ids) - fixed
            engine.forget_rate = min(max(remaining_noise / max(len(active), 1), 0.0), 0.95)
        self.sampler.set_indices(subset, self.label_store.labels)

    def _force_keep_verified(self, engine: Engine) -> None:
        output = engine.state.output
        output["force_keep"] = self.label_store.verified[output["index"].cpu()].to(output["label"].device)

    def _remember(self, engine: Engine, val_score: float) -> None:
        self.best_val = float(val_score)
        self.best_weights = {k: v.detach().clone() for k, v in engine.network.state_dict().items()}

    def _epoch_completed(self, engine: Engine) -> None:
        engine.state.metrics["relabel_forget_rate"] = float(engine.forget_rate or 0.0)
        val_score = self._validation_score(engine)
        engine.state.metrics["relabel_val_balanced_accuracy"] = val_score
        if val_score > self.best_val:
            self._remember(engine, val_score)
        if engine.state.epoch % self.recalibration_epochs:
            return
        round_index = engine.state.epoch // self.recalibration_epochs
        state = RoundState.load(self.state_path)
        if state.round < round_index:
            return  # the round's answers never arrived (interactive stop)
        # The round ends with the best model on validation so far; the test set only reports on it.
        engine.network.load_state_dict(self.best_weights)
        state.record_metrics(round_index, self._evaluate(engine, state))
        state.save(self.state_path)
        self._write_round_table(state)

    def _completed(self, engine: Engine) -> None:
        if self.waiting_for is not None:
            return
        state = RoundState.load(self.state_path)
        state.write_labels_cleaned(self.labels_path)
        atomic_torch_save(self.dir / "models" / "model.pt", engine.network.state_dict())
        self._write_round_table(state)
        print(self.round_table_markdown(state), flush=True)

    # ------------------------------------------------------------------------------------------ metrics
    def _validation_score(self, engine: Engine) -> float:
        report = evaluate_loader(engine.network, self.val_loader, len(self.class_names), self._device(engine))
        return float(report["balanced_accuracy"])

    def state_dict(self) -> dict:
        """The best validation score and weights so far, so a resumed run chooses as an uninterrupted one."""
        return {"best_val": self.best_val, **{f"best_weights.{k}": v for k, v in self.best_weights.items()}}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best_val = float(state_dict["best_val"])
        prefix = "best_weights."
        self.best_weights = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}

    def _evaluate(self, engine: Engine, state: RoundState) -> dict:
        device = self._device(engine)
        metrics: dict = {}
        for split, loader in (("val", self.val_loader), ("test", self.test_loader)):
            if loader is None:
                continue
            report = evaluate_loader(engine.network, loader, len(self.class_names), device)
            for key in ("balanced_accuracy", "macro_f1", "mcc", "auroc"):
                metrics[f"{split}_{key}"] = float(report[key])
            metrics[f"{split}_per_class_recall"] = [float(r) for r in report["per_class_recall"]]
        if self.true_labels is not None:
            metrics.update(self._simulation_metrics(state))
        if self.writer is not None:
            step = state.budget_spent
            for key, value in metrics.items():
                if isinstance(value, float) and math.isfinite(value):
                    self.writer.add_scalar(f"relabel/{key}", value, step)
            self.writer.flush()
        return metrics

    def _simulation_metrics(self, state: RoundState) -> dict:
        """Errors found and the pool's noise rate, from the simulation's truth (reported, never trained on)."""
        truth = self.true_labels
        queried = [i for ids in state.queried.values() for i in ids]
        position = {sample_id: i for i, sample_id in enumerate(self.ids)}
        answered = [position[i] for i in queried if state.source[position[i]] in ("expert", "oracle", "excluded")]
        errors_found = sum(self.given_labels[i] != truth[i] for i in answered)
        pool = state.pool_indices()
        pool_noise = sum(self.given_labels[i] != truth[i] for i in pool) / len(pool) if pool else float("nan")
        current_noise = sum(
            state.current_labels[i] != truth[i] for i in range(len(truth)) if state.current_labels[i] >= 0
        ) / max(sum(label >= 0 for label in state.current_labels), 1)
        return {"errors_found": int(errors_found), "pool_noise_rate": pool_noise, "label_noise_rate": current_noise}

    def round_rows(self, state: RoundState) -> list[dict]:
        entries = [
            {"round": 0, "labels_spent": 0, "labels_changed": 0, "excluded": 0, "metrics": state.baseline_metrics}
        ]
        spent = changed = excluded = 0
        for entry in state.history:
            spent += entry["labels_spent"]
            changed += entry["labels_changed"]
            excluded += entry["excluded"]
            entries.append(
                {
                    "round": entry["round"],
                    "labels_spent": spent,
                    "labels_changed": changed,
                    "excluded": excluded,
                    "metrics": entry.get("metrics", {}),
                }
            )
        rows = []
        for entry in entries:
            metrics = entry["metrics"]
            errors = metrics.get("errors_found")
            spent = entry["labels_spent"]
            rows.append(
                {
                    "round": entry["round"],
                    "labels_spent": spent,
                    "labels_changed": entry["labels_changed"],
                    "excluded": entry["excluded"],
                    "errors_found": "" if errors is None else errors,
                    "yield": "" if errors is None or spent == 0 else errors / spent,
                    "pool_noise_rate": metrics.get("pool_noise_rate", ""),
                    "val_balanced_accuracy": metrics.get("val_balanced_accuracy", ""),
                    "test_balanced_accuracy": metrics.get("test_balanced_accuracy", ""),
                    "test_macro_f1": metrics.get("test_macro_f1", ""),
                    "test_per_class_recall": metrics.get("test_per_class_recall", []),
                }
            )
        return rows

    def round_table_markdown(self, state: RoundState) -> str:
        """The round table as markdown: labels spent, errors found, yield, pool noise and metrics."""
        rows = self.round_rows(state)
        header = "| " + " | ".join(ROUND_COLUMNS) + " |"
        lines = [header, "|" + "---|" * len(ROUND_COLUMNS)]
        for row in rows:
            cells = [_fmt(row[c]) for c in ROUND_COLUMNS]
            lines.append("| " + " | ".join(cells) + " |")
        recall_rows = [r for r in rows if r["test_per_class_recall"]]
        if recall_rows:
            lines += ["", "Per-class test recall by round:", ""]
            lines.append("| round | " + " | ".join(self.class_names) + " |")
            lines.append("|" + "---|" * (len(self.class_names) + 1))
            for row in recall_rows:
                lines.append(f"| {row['round']} | " + " | ".join(_fmt(v) for v in row["test_per_class_recall"]) + " |")
        return "\n".join(lines) + "\n"

    def _write_round_table(self, state: RoundState) -> None:
        rows = self.round_rows(state)
        atomic_write_csv(self.dir / "rounds.csv", rows, ROUND_COLUMNS)
        atomic_write_text(self.dir / "rounds.md", self.round_table_markdown(state))


def _fmt(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.3f}"
    return str(value)
