"""The round logic of phase 2 as plain Python: query, answers, what to train on, model choice, round table.

:class:`RelabelDriver` knows the network, the data loaders, the state files and the settings, and nothing of
Ignite: a training loop (the bundle's :class:`alr_monai.handlers.ActiveRelabelRoundHandler`, or any other) calls
it at the start and end of the run, of each recalibration epoch and of each round, and pushes
:meth:`RelabelDriver.training_target` into its sampler, label lookup and forget rate.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from alr_monai.algorithms.stability import (
    LR_SCHEDULES,
    MODEL_CHOICES,
    WeightAverage,
    balanced_accuracy_standard_error,
    choose_round_model,
    cosine_learning_rate,
)
from alr_monai.distributed import is_main_process
from alr_monai.evaluation import evaluate_loader, predict
from alr_monai.relabel.acquire import acquire, quota_mode, score_meaning
from alr_monai.relabel.expert import OracleExpert, class_legend
from alr_monai.relabel.readers import ADJUDICATOR, ReaderSettings, submit_reader_answers, write_reader_settings
from alr_monai.relabel.recut import TrustedRecut
from alr_monai.relabel.state import (
    RoundError,
    RoundState,
    answer_summary,
    apply_answers_file,
    open_state,
    start_round,
)
from alr_monai.tables import format_cell, markdown_escape, markdown_table
from alr_monai.utils import atomic_torch_save, atomic_write_csv, atomic_write_text

__all__ = ["MODES", "RECIPES", "ROUND_COLUMNS", "UNQUERIED_RULES", "RelabelDriver", "RoundOutcome", "TrainingTarget"]

RECIPES = ("coteaching", "trusted")
UNQUERIED_RULES = ("drop", "pseudo_label")
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
    "model",
]


def patient_grouped_order(patient_ids: Sequence[str]) -> list[int]:
    """The order that keeps each patient's images together, for rows given best-ranked first.

    Patients come in the order of their best-ranked image and a patient's images in rank order; an image
    without a patient id ("") stays a group of its own at its rank. The order is stable, so rows without any
    patient id keep their ranking.

    Args:
        patient_ids: the patient id of each row, rows in rank order.

    Returns:
        Row positions in the new order (a permutation of ``range(len(patient_ids))``).
    """
    groups: dict[str | tuple[str, int], list[int]] = {}
    for position, patient in enumerate(patient_ids):
        # A row without a patient gets a key no patient id can equal (ids are strings, this is a tuple).
        groups.setdefault(patient if patient else ("", position), []).append(position)
    return [position for members in groups.values() for position in members]


class RoundOutcome:
    """What :meth:`RelabelDriver.advance_to` found: the round is applied, the pool is empty, or a person must answer."""

    APPLIED = "applied"
    EMPTY = "empty"
    WAITING = "waiting"


@dataclass(frozen=True)
class TrainingTarget:
    """What the trainer trains on for the current state.

    Attributes:
        labels: the current label of every training sample (-1 = excluded), by training index.
        verified: True for samples whose label an expert (or the oracle) gave; co-teaching always keeps them.
        indices: the training indices to draw batches from.
        forget_rate: the co-teaching forget rate (0 for the "trusted" recipe).
    """

    labels: list[int]
    verified: list[bool]
    indices: list[int]
    forget_rate: float


class RelabelDriver:
    """Runs the relabel rounds of phase 2: it queries, takes answers, chooses what to train on and which weights
    to keep, evaluates each round and writes the round table.

    A run of ``num_rounds * recalibration_epochs`` recalibration epochs calls, in order: :meth:`open` once; at
    the start of each epoch :meth:`round_starting` and, when a round starts, :meth:`advance_to`; after each epoch
    :meth:`validation_score`, :meth:`consider` and, when a round ends, :meth:`end_round`; at the end
    :meth:`finish`. Every round is applied through the crash-safe :func:`apply_answers_file` (audit trail,
    labels_cleaned.csv, state last), so a run killed anywhere resumes from state.json.

    Model choice (``model_choice``; the test set is only ever reported):
        "tolerant" (default): a round's model is its last recalibration epoch's weights (the weight average when
            ``ema_decay`` > 0); it replaces the incumbent (phase 1's model, then the last adopted round's) unless its
            validation balanced accuracy is lower by more than ``choice_tolerance`` standard errors of the
            incumbent's validation estimate (:func:`alr_monai.algorithms.stability.choose_round_model`). The
            incumbent's score is the maximum of many noisy epochs, so "beat it outright" would discard rounds that
            fixed labels; a round whose model is clearly worse is still rolled back. The reason is recorded per
            round (state.json history ``model_choice_reason``, the ``model`` column of rounds.csv).
        "best": the weights with the best validation balanced accuracy of any epoch so far (phase 1's model
            counts) are restored at the end of every round (the behaviour before issue 11).

    Suspected but unqueried samples (recipe "trusted", ``unqueried``): "drop" trains without them; "pseudo_label"
    adds those the round's starting model predicts with probability >= ``pseudo_label_threshold``, with the
    predicted label (computed once per round, on the deterministic transforms, and kept over a resume).

    Learning rate (``lr_schedule``): "cosine" anneals from ``learning_rate`` to ``learning_rate *
    min_lr_fraction`` over each round's recalibration and restarts with the next round's labels; "constant"
    keeps ``learning_rate``. The rate is a function of the iteration, so a resumed run sets the same rates.

    Recalibration recipes:
        "trusted" (default): plain training on the trusted set (phase-1 selection with its given labels, plus
            every expert answer), as the reference code does, but each round ends on the best-validation model.
        "coteaching": keep co-teaching on every non-excluded sample with the current labels; expert-verified
            samples are always kept, and the forget rate shrinks as errors are fixed
            (phase-1 rate x N - labels changed) / N.

    Args:
        network: the model being recalibrated (the trainer's network; its weights are chosen here).
        relabel_dir: folder for state.json, queries/, answers/, audit.csv, labels_cleaned.csv, rounds.csv.
        class_names: names by class index.
        ids: training ids by index.
        given_labels: labels as given, by index.
        phase1_trusted: phase 1's clean selection, by index.
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
        patient_ids: patient id per index for the query file (optional; "" = unknown).
        group_by_patient: order each round's query so a patient's images are together (one expert sitting per
            patient); only the order changes, never which samples are asked. No effect without patient ids.
        seed: seed for random acquisition (per round, so a resume picks the same samples).
        mc_samples: MC-dropout passes for BALD.
        batch_size: inference batch size.
        num_workers: DataLoader workers of the scoring passes (acquisition, pseudo-labels).
        pin_memory: pinned host memory for those passes (CUDA only).
        resume_command: the command a person runs after filling the answers file.
        summary_writer: TensorBoard writer for the rounds' scalars, step = labels spent (optional; the bundle
            gives it the run ``tensorboard/rounds``), tagged by :func:`round_tag`.
        device: inference device (default: the device of the network's parameters).
        model_choice: "tolerant" or "best" (see above).
        choice_tolerance: standard errors a round's model may trail the incumbent and still be adopted.
        ema_decay: > 0 averages the weights over each round's steps with this decay (0 = no averaging).
        lr_schedule: "constant" or "cosine" (per round).
        learning_rate: the base learning rate of recalibration (needed by "cosine").
        min_lr_fraction: the cosine schedule's final rate as a fraction of ``learning_rate``.
        unqueried: "drop" or "pseudo_label" (see above).
        pseudo_label_threshold: the predicted probability a pseudo-label needs.
        class_quota: ``"off"``; ``"given"``: each round's budget is split over the pool's given labels in
            proportion to their counts (the pool is what phase 1 cut from each class at its estimated noise rate,
            so these are the estimated noisy counts per class); ``"predicted"``: split evenly over the classes the
            model predicts for the pool. Each share is filled by the acquisition's top scores within the class
            (:func:`~alr_monai.relabel.acquire.quota_mode` also takes the old true/false).
        readers: readers per round (> 1: each answers, ``consensus`` decides, disagreements are adjudicated;
            see :mod:`alr_monai.relabel.readers`). In simulation each reader is an oracle with its own errors.
        consensus: "majority" or "unanimous".
        image_refs: what the query file's ``image`` column shows for a sample without an image path, by index
            (``npz:train_images[123]`` for a MedMNIST .npz array, see :func:`alr_monai.data.medmnist.npz_reference`).
    """

    def __init__(
        self,
        network: torch.nn.Module,
        relabel_dir: str | Path,
        class_names: Sequence[str],
        ids: Sequence[str],
        given_labels: Sequence[int],
        phase1_trusted: Sequence[bool],
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
        group_by_patient: bool = True,
        seed: int = 0,
        mc_samples: int = 10,
        batch_size: int = 256,
        num_workers: int = 0,
        pin_memory: bool = False,
        resume_command: str = "alr relabel",
        summary_writer=None,
        device: str | torch.device | None = None,
        model_choice: str = "best",
        choice_tolerance: float = 1.0,
        ema_decay: float = 0.0,
        lr_schedule: str = "constant",
        learning_rate: float | None = None,
        min_lr_fraction: float = 0.0,
        unqueried: str = "drop",
        pseudo_label_threshold: float = 0.9,
        class_quota: str | bool = "off",
        readers: int = 1,
        consensus: str = "majority",
        recut: TrustedRecut | None = None,
        image_refs: Sequence[str] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}")
        if mode == "simulation" and oracle is None:
            raise ValueError("simulation mode needs an oracle (relabel#oracle); use mode 'interactive' for a person")
        if model_choice not in MODEL_CHOICES:
            raise ValueError(f"model_choice must be one of {MODEL_CHOICES}, got {model_choice!r}")
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
        if lr_schedule != "constant" and (learning_rate is None or learning_rate <= 0):
            raise ValueError(f"lr_schedule {lr_schedule!r} needs the base learning_rate (> 0), got {learning_rate}")
        if unqueried not in UNQUERIED_RULES:
            raise ValueError(f"unqueried must be one of {UNQUERIED_RULES}, got {unqueried!r}")
        if choice_tolerance < 0:
            raise ValueError(f"choice_tolerance must be >= 0, got {choice_tolerance}")
        if round_budget < 1 or num_rounds < 1 or recalibration_epochs < 1:
            raise ValueError("round_budget, num_rounds and recalibration_epochs must all be >= 1")
        self.network = network
        self.dir = Path(relabel_dir)
        self.state_path = self.dir / "state.json"
        self.audit_path = self.dir / "audit.csv"
        self.labels_path = self.dir / "labels_cleaned.csv"
        self.class_names = list(class_names)
        self.ids = [str(i) for i in ids]
        self.given_labels = [int(label) for label in given_labels]
        self.phase1_trusted = [bool(t) for t in phase1_trusted]
        if not len(self.given_labels) == len(self.phase1_trusted) == len(self.ids):
            raise ValueError(
                f"{len(self.ids)} ids, {len(self.given_labels)} given labels and {len(self.phase1_trusted)} "
                "trusted flags: one of each per training sample"
            )
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
        self.group_by_patient = bool(group_by_patient)
        self.seed = seed
        self.mc_samples = mc_samples
        self.batch_size = batch_size
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.resume_command = resume_command
        self.writer = summary_writer
        self._device = device
        self.model_choice = model_choice
        self.choice_tolerance = float(choice_tolerance)
        self.lr_schedule = lr_schedule
        self.learning_rate = learning_rate
        self.min_lr_fraction = float(min_lr_fraction)
        self.weight_average = WeightAverage(network, ema_decay) if ema_decay > 0 else None
        self.unqueried = unqueried
        self.class_quota = quota_mode(class_quota)
        self.reader_settings = ReaderSettings(int(readers), consensus)
        self.pseudo_label_threshold = float(pseudo_label_threshold)
        # the round-1 audit and the trusted set re-cut at the expert-corrected rates (off: phase 1's cut stands)
        self.recut = recut if recut is not None and recut.enabled else None
        if self.recut is not None:
            # the audit is asked within round 1's budget; one larger than it would spend labels nobody budgeted
            most = self.recut.most_labels
            if most > round_budget:
                fits = round_budget * self.recut.per_class // most  # the per_class whose most_labels fits
                raise ValueError(
                    f"relabel#audit_per_class {self.recut.per_class} asks up to {most} labels in round 1 "
                    f"({self.recut.per_class} per given class from the trusted set and as many from the pool, "
                    f"{self.recut.num_classes} classes), more than relabel#round_budget {round_budget}: set "
                    f"relabel#audit_per_class to {fits}{' (off)' if fits == 0 else ''} or the budget to {most} or more"
                )
        self.image_refs = None if image_refs is None else [str(r) for r in image_refs]
        # the label each suspected, unqueried sample trains with this round (-1 = not trained on)
        self.pseudo_labels = torch.full((len(self.ids),), -1, dtype=torch.long)
        # the incumbent: the weights a round must match (best so far for "best"), their score, its standard error
        # and the round they come from (0 = phase 1)
        self.best_val = float("-inf")
        self.best_weights: dict[str, torch.Tensor] = {}
        self.best_standard_error = float("nan")
        self.best_round = 0
        self.last_val = float("nan")
        self._candidate_standard_error = float("nan")
        self.logger = logging.getLogger(__name__)

    # ------------------------------------------------------------------------------------------ paths
    @property
    def device(self) -> torch.device | str:
        if self._device is not None:
            return self._device
        parameter = next(self.network.parameters(), None)
        return parameter.device if parameter is not None else torch.device("cpu")

    def query_path(self, round_index: int) -> Path:
        """The query file of round ``round_index``."""
        return self.dir / "queries" / f"round_{round_index}.csv"

    def answers_path(self, round_index: int) -> Path:
        """Where the answers of round ``round_index`` are expected."""
        return self.dir / "answers" / f"round_{round_index}.csv"

    def load_state(self) -> RoundState:
        """The round state as saved in state.json."""
        return RoundState.load(self.state_path)

    # ------------------------------------------------------------------------------------------ schedule
    def round_starting(self, epoch: int) -> int | None:
        """The round whose recalibration begins with (1-based) ``epoch``, or None mid-round."""
        if (epoch - 1) % self.recalibration_epochs:
            return None
        return self.round_of(epoch)

    def round_of(self, epoch: int) -> int:
        """The round whose recalibration (1-based) ``epoch`` belongs to."""
        return (epoch - 1) // self.recalibration_epochs + 1

    def round_ending(self, epoch: int) -> int | None:
        """The round whose recalibration ends with (1-based) ``epoch``, or None mid-round."""
        if epoch % self.recalibration_epochs:
            return None
        return epoch // self.recalibration_epochs

    # ------------------------------------------------------------------------------------------ rounds
    def open(self) -> RoundState:
        """Start or continue: create the state from phase 1's selection if there is none, record round 0 (the
        phase-1 model before any expert label) once, and count the current weights as the best so far unless a
        resumed run has restored its own choice."""
        state = open_state(self.state_path, self.ids, self.given_labels, self.phase1_trusted, self.class_names)
        if is_main_process():  # the other ranks open after rank 0 (a barrier), and only read
            write_reader_settings(self.dir, self.reader_settings)
        if state.ids != self.ids:
            raise ValueError(f"{self.state_path} belongs to another training set (ids differ)")
        if not state.baseline_metrics:
            state.record_metrics(0, self.evaluate(state))
            state.save(self.state_path)
            self.write_round_table(state)
        if not self.best_weights:
            matrix = state.baseline_metrics.get("val_confusion_matrix")
            if not matrix:  # a state rebuilt by `alr recover` keeps only what rounds.csv printed
                report = evaluate_loader(self.network, self.val_loader, len(self.class_names), self.device)
                matrix = report["confusion_matrix"]
            standard_error = balanced_accuracy_standard_error(matrix)
            self.remember(state.baseline_metrics["val_balanced_accuracy"], standard_error, 0)
        return state

    def begin_round(self, round_index: int) -> None:
        """A round's recalibration starts from the current weights: the weight average restarts there, and the
        pseudo-labels of the unqueried pool are taken from the current model (rule "pseudo_label")."""
        if self.weight_average is not None:
            self.weight_average.reset()
        if self.unqueried == "pseudo_label":
            self.pseudo_labels = self._confident_predictions(self.load_state().pool_indices())

    def _pseudo_labelled(self, state: RoundState) -> list[int]:
        """The unqueried pool samples this round trains with a pseudo-label."""
        if self.unqueried != "pseudo_label":
            return []
        return [i for i in state.pool_indices() if int(self.pseudo_labels[i]) >= 0]

    def _pseudo_label_metrics(self, state: RoundState) -> dict:
        """How many unqueried samples this round trained with a pseudo-label (their accuracy, in simulation, is
        one of :meth:`simulation_metrics`)."""
        return {"pseudo_labelled": len(self._pseudo_labelled(state))} if self.unqueried == "pseudo_label" else {}

    def _confident_predictions(self, pool: Sequence[int]) -> torch.Tensor:
        """Predicted label of every pool sample the model is confident about (-1 elsewhere), by training index."""
        labels = torch.full((len(self.ids),), -1, dtype=torch.long)
        if not pool:
            return labels
        outputs = predict(self.network, self._loader(pool), self.device)
        confidence, predicted = torch.softmax(outputs["logits"], 1).max(1)
        confident = confidence >= self.pseudo_label_threshold
        labels[outputs["index"][confident]] = predicted[confident]
        return labels

    def after_step(self) -> None:
        """After each optimiser step: fold the weights into the average (when averaging)."""
        if self.weight_average is not None:
            self.weight_average.update()

    def learning_rate_at(self, epoch: int, iteration_in_epoch: int, epoch_length: int) -> float | None:
        """The learning rate of (1-based) ``epoch``'s (0-based) ``iteration_in_epoch``; None = leave it as is."""
        if self.lr_schedule == "constant":
            return None
        step = ((epoch - 1) % self.recalibration_epochs) * epoch_length + iteration_in_epoch
        total = self.recalibration_epochs * epoch_length
        return cosine_learning_rate(float(self.learning_rate), step, total, self.min_lr_fraction)

    def advance_to(self, round_index: int) -> str:
        """Make sure round ``round_index``'s answers are applied: query it if not yet queried, let the oracle answer
        in simulation, and apply the answers file if it exists.

        Returns:
            A :class:`RoundOutcome`: APPLIED (now or before), EMPTY (the pool is empty, nothing to ask) or WAITING
            (the answers file does not exist yet; :meth:`waiting_message` says what to do).
        """
        state = self.load_state()
        if state.round >= round_index:
            return RoundOutcome.APPLIED
        query_path, answers_path = self.query_path(round_index), self.answers_path(round_index)
        if state.pending_round != round_index:
            rows = self.query_rows(state, round_index)
            if not rows:
                self.logger.info(f"round {round_index}: the pool is empty, nothing to ask")
                return RoundOutcome.EMPTY
            # with the audit and re-cut, a round may ask samples phase 1 trusted (the audit) or no longer trusts
            scope = "pool" if self.recut is None else "unanswered"
            start_round(self.state_path, query_path, round_index, rows, scope=scope)
            self.logger.info(f"round {round_index}: wrote {len(rows)} queries to {query_path}")
            self._write_query_page(round_index, query_path)
        else:
            if not query_path.exists():  # deleted while the round waits: ranked again, the same rows come back
                self._rebuild_query_file(state, round_index, query_path)
            if not query_path.with_suffix(".html").exists():  # a crash, or an older version, left it without one
                self._write_query_page(round_index, query_path)
        if self.mode == "simulation" and not answers_path.exists():
            if self.reader_settings.readers == 1:
                self.oracle.fill_query_file(query_path, answers_path, round_index)
            else:
                self._simulate_readers(round_index, query_path)
        if not answers_path.exists():
            return RoundOutcome.WAITING
        self.apply_round(round_index)
        return RoundOutcome.APPLIED

    def _rebuild_query_file(self, state: RoundState, round_index: int, query_path: Path) -> None:
        """Write the pending round's lost query file again: the pool ranked by the same model and seed gives the
        same rows, checked against the ids the state recorded before anything is written.

        Raises:
            RoundError: the ranking now gives other ids (the model changed), so the file cannot be rebuilt as asked.
        """
        rows = self.query_rows(state, round_index)
        recorded = state.queried[str(round_index)]
        if [str(row["id"]) for row in rows] != recorded:
            raise RoundError(
                f"query file {query_path} of pending round {round_index} is missing, and ranking the pool again "
                f"does not give the {len(recorded)} samples the state records (relabel/state.json, "
                f"queried[{round_index!r}]), so it cannot be rebuilt as it was asked: restore the file from a backup"
            )
        start_round(self.state_path, query_path, round_index, rows)
        self.logger.warning(f"round {round_index}: rebuilt the missing query file {query_path} ({len(rows)} samples)")

    def _simulate_readers(self, round_index: int, query_path: Path) -> None:
        """Simulation with several readers: each oracle reader answers, then (if needed) an oracle adjudicator."""
        state = self.load_state()
        queried = state.queried[str(round_index)]
        scratch = self.dir / "answers" / f"round_{round_index}.simulated"
        names = [f"reader{number}" for number in range(1, self.reader_settings.readers + 1)]
        result: dict = {}
        for number, name in enumerate(names, 1):
            if (self.dir / "answers" / f"round_{round_index}" / f"{name}.csv").exists():
                continue
            self.oracle.reader(number).fill_query_file(query_path, scratch / f"{name}.csv", round_index)
            result = submit_reader_answers(
                self.dir, round_index, queried, self.ids, self.class_names, scratch / f"{name}.csv", name,
                self.reader_settings, allow_empty=True,
            )  # fmt: skip
        if result.get("status") == "adjudication":
            adjudicator = self.oracle.reader(len(names) + 1)
            adjudicator.fill_query_file(Path(result["adjudication_file"]), scratch / f"{ADJUDICATOR}.csv", round_index)
            submit_reader_answers(
                self.dir, round_index, queried, self.ids, self.class_names, scratch / f"{ADJUDICATOR}.csv",
                ADJUDICATOR, self.reader_settings, allow_empty=True,
            )  # fmt: skip

    def waiting_message(self, round_index: int) -> str:
        """What a person does when round ``round_index`` waits for the expert."""
        query = self.query_path(round_index)
        page, run_dir = query.with_suffix(".html"), self.dir.parent
        column = (
            "the expert_label column (a class name or its number as on the page; blank = skip; 'exclude' drops the "
            "image)"
        )
        legend = (
            f"  Class numbers (page keys and expert_label): {class_legend(self.class_names)}\n"
            f"  Query score (the score column): {score_meaning(self.acquisition)}\n"
        )
        if not page.is_file():  # a round queried before the sheet existed, or whose sheet could not be written
            return (
                f"\nRound {round_index} is waiting for the expert.\n"
                f"  1. Open {query} and fill {column}.\n"
                f"  2. Save it as {self.answers_path(round_index)} (or run: alr answer <your file> --run_dir {run_dir}).\n"
                f"  3. Resume with: {self.resume_command}\n"
                f"{legend}"
            )
        readers = self.reader_settings.readers
        apply_line = (
            f"  2. Apply the file: alr answer <downloaded or filled file> --run_dir {run_dir} (or save it as "
            f"{self.answers_path(round_index)}).\n"
            if readers == 1
            else f"  2. Each of the {readers} readers applies their own file: alr answer <file> --run_dir {run_dir} "
            f"--reader NAME; disagreements go to an adjudication file (--reader adjudicator).\n"
        )
        return (
            f"\nRound {round_index} is waiting for the expert.\n"
            f"  1. Open {page} in a web browser: look at each image, pick a class, Exclude or Skip (keys 1-9, x, "
            f"s), then press 'Save answers CSV' (it downloads round_{round_index}.csv).\n"
            f"     Without a browser: open {query} and fill {column}.\n"
            f"{apply_line}"
            f"  3. Resume with: {self.resume_command}\n"
            f"{legend}"
        )

    def apply_round(self, round_index: int) -> RoundState:
        """Apply round ``round_index``'s answers file (crash-safe; a second call applies nothing twice)."""
        source = "oracle" if self.mode == "simulation" else "expert"
        state = apply_answers_file(
            self.state_path,
            self.audit_path,
            self.labels_path,
            self.answers_path(round_index),
            round_index,
            source=source,
        )
        entry = state.history[-1]
        self.logger.info(f"round {round_index}: {answer_summary(entry)}")
        return state

    def _answered(self, state: RoundState) -> list[bool]:
        return [source != "given" for source in state.source]

    def trusted_mask(self, state: RoundState) -> list[bool]:
        """What recalibration trains on: phase 1's trusted set plus every answer, or, once the audit's answers
        are in (``recut``), each class's lowest-loss share at its expert-corrected rate plus every answer."""
        if self.recut is None:
            return list(state.trusted)
        return self.recut.trusted_mask(state.current_labels, self._answered(state))

    def pool(self, state: RoundState) -> list[int]:
        """The samples the acquisition may ask about: untrusted (after any re-cut), unanswered, not excluded."""
        if self.recut is None or state.pool_scope == "unverified":
            return state.pool_indices()
        trusted = self.trusted_mask(state)
        return [
            i
            for i, (t, label, source) in enumerate(zip(trusted, state.current_labels, state.source, strict=True))
            if not t and label >= 0 and source == "given"
        ]

    def _audit_rows(self, state: RoundState, round_index: int) -> list[dict]:
        """The audit's random draw (first asking round only, with ``recut``), as query rows."""
        if self.recut is None:
            return []
        answerable = [
            label >= 0 and source == "given" for label, source in zip(state.current_labels, state.source, strict=True)
        ]
        drawn = self.recut.draw(answerable, round_index)
        if not drawn:
            return []
        outputs = predict(self.network, self._loader(drawn), self.device)
        probabilities = torch.softmax(outputs["logits"].float(), 1)
        confidence, predicted = probabilities.max(1)
        by_index = {int(i): k for k, i in enumerate(outputs["index"].tolist())}
        self.logger.info(
            f"round {round_index}: {len(drawn)} of the budget go to a random audit ({self.recut.per_class} per given "
            "class from the trusted set and from the pool); their answers correct each class's noise rate"
        )
        return [
            {
                "id": self.ids[i],
                "image": self._image_column(i),
                "given_label": state.current_labels[i],
                "predicted_label": int(predicted[by_index[i]]),
                "predicted_probability": float(confidence[by_index[i]]),
                "score": float("nan"),  # drawn at random, not ranked
                "patient_id": self.patient_ids[i] if self.patient_ids else "",
            }
            for i in drawn
        ]

    def query_rows(self, state: RoundState, round_index: int) -> list[dict]:
        """Rank the pool with the current model and return the round's query rows; [] if no pool.

        Rows come best first; with ``group_by_patient`` and patient ids, a patient's images are kept together
        (patients in the order of their best-ranked image, images within a patient by rank), so the expert
        sees each patient once. The acquisition still decides which samples are asked.
        """
        audit = self._audit_rows(state, round_index)
        audited = {row["id"] for row in audit}
        pool = [i for i in self.pool(state) if self.ids[i] not in audited]
        budget = max(self.round_budget - len(audit), 0)
        if not pool or budget == 0:
            return audit
        pool_loader = self._loader(pool)
        trusted = [i for i, t in enumerate(state.trusted) if t]
        labelled_loader = self._loader(trusted) if self.acquisition == "coreset" and trusted else None
        generator = torch.Generator().manual_seed(self.seed * 1000 + round_index)
        picked = acquire(
            self.acquisition,
            self.network,
            pool_loader,
            min(budget, len(pool)),
            self.device,
            labelled_loader=labelled_loader,
            mc_samples=self.mc_samples,
            generator=generator,
            class_quota=self.class_quota,
        )
        rows = []
        for rank, index in enumerate(picked.indices):
            rows.append(
                {
                    "id": self.ids[index],
                    "image": self._image_column(index),
                    "given_label": state.current_labels[index],
                    "predicted_label": picked.predicted_labels[rank],
                    "predicted_probability": picked.predicted_probabilities[rank],
                    "score": picked.scores[rank],
                    "patient_id": self.patient_ids[index] if self.patient_ids else "",
                }
            )
        rows = audit + rows
        if self.group_by_patient:
            rows = [rows[k] for k in patient_grouped_order([row["patient_id"] for row in rows])]
        return rows

    def _image_column(self, index: int) -> str:
        """The query file's ``image`` cell: the image's path, else its reference (an array of a .npz file)."""
        if self.image_paths and self.image_paths[index]:
            return self.image_paths[index]
        return self.image_refs[index] if self.image_refs else ""

    def _loader(self, indices: Sequence[int]) -> DataLoader:
        subset = Subset(self.scoring_dataset, list(indices))
        return DataLoader(
            subset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers, pin_memory=self.pin_memory
        )

    def training_target(self, state: RoundState) -> TrainingTarget:
        """Labels, verified mask, the subset trained on and the forget rate that follow ``state``."""
        verified = [source in ("expert", "oracle") for source in state.source]
        active = [i for i, label in enumerate(state.current_labels) if label >= 0]
        labels = list(state.current_labels)
        if self.recipe == "trusted":
            trusted = self.trusted_mask(state)
            indices = [i for i in active if trusted[i]]
            forget_rate = 0.0
            if self.unqueried == "pseudo_label":
                pool = state.pool_indices()
                pseudo = [i for i in pool if int(self.pseudo_labels[i]) >= 0]
                for i in pseudo:
                    labels[i] = int(self.pseudo_labels[i])
                indices = sorted(indices + pseudo)
        else:
            indices = active
            fixed = sum(entry["labels_changed"] for entry in state.history)
            remaining_noise = self.base_forget_rate * len(self.ids) - fixed
            forget_rate = min(max(remaining_noise / max(len(active), 1), 0.0), 0.95)
        return TrainingTarget(labels, verified, indices, forget_rate)

    def end_round(self, round_index: int) -> RoundState | None:
        """Close round ``round_index``: restore the best validation weights so far, evaluate and record the round,
        rewrite the round table. None (nothing done) if the round's answers never arrived."""
        state = self.load_state()
        if state.round < round_index:
            return None
        choice = self._choose(round_index)
        if not is_main_process():  # every rank loads the chosen weights; rank 0 alone evaluates and writes
            return state
        state.record_metrics(round_index, self.evaluate(state))
        state.record_metrics(round_index, {**choice, **self._pseudo_label_metrics(state)})
        state.save(self.state_path)
        self.write_round_table(state)
        return state

    def finish(self) -> RoundState:
        """End of the run: labels_cleaned.csv, the final model (models/model.pt) and the round table."""
        state = self.load_state()
        state.write_labels_cleaned(self.labels_path)
        atomic_torch_save(self.dir / "models" / "model.pt", self.network.state_dict())
        self.write_round_table(state)
        return state

    # ------------------------------------------------------------------------------------------ model choice
    def _candidate_weights(self) -> dict[str, torch.Tensor]:
        """The round's model as it stands: the weight average when averaging, else the live weights."""
        source = self.weight_average.average if self.weight_average is not None else self.network.state_dict()
        return {k: v.detach().clone() for k, v in source.items()}

    def validation_score(self) -> float:
        """Balanced accuracy on the validation set of the round's model as it stands (the weight average when
        averaging; the live weights stay as they are for training)."""
        self._candidate_standard_error = float("nan")
        if self.weight_average is None:
            report = evaluate_loader(self.network, self.val_loader, len(self.class_names), self.device)
        else:
            live = {k: v.detach().clone() for k, v in self.network.state_dict().items()}
            self.weight_average.copy_to()
            try:
                report = evaluate_loader(self.network, self.val_loader, len(self.class_names), self.device)
            finally:
                self.network.load_state_dict(live)
        self._candidate_standard_error = balanced_accuracy_standard_error(report["confusion_matrix"])
        self.last_val = float(report["balanced_accuracy"])
        return self.last_val

    def remember(self, val_score: float, standard_error: float = float("nan"), round_index: int | None = None) -> None:
        """Make the round's model as it stands the incumbent, with its validation score."""
        self.best_val = float(val_score)
        self.best_weights = self._candidate_weights()
        self.best_standard_error = float(standard_error)
        if round_index is not None:
            self.best_round = int(round_index)

    def consider(self, val_score: float, round_index: int | None = None) -> bool:
        """Model choice "best": remember the current weights if ``val_score`` beats the best so far (True if it
        did). Model choice "tolerant" judges whole rounds in :meth:`end_round` instead, so this does nothing."""
        if self.model_choice != "best":
            return False
        if val_score > self.best_val:
            self.remember(val_score, self._candidate_standard_error, round_index)
            return True
        return False

    def _incumbent_name(self) -> str:
        return "phase 1's model" if self.best_round == 0 else f"round {self.best_round}'s model"

    def _choose(self, round_index: int) -> dict:
        """Load the model that closes round ``round_index`` into the network; the choice and its reason."""
        if self.model_choice == "best":
            adopted = self.best_round == round_index
            reason = (
                f"adopted: best validation so far ({self.best_val:.3f})"
                if adopted
                else f"kept {self._incumbent_name()}: no epoch of this round beat its val {self.best_val:.3f}"
            )
        else:
            if math.isnan(self.last_val):
                self.validation_score()
            choice = choose_round_model(
                self.last_val, self.best_val, self.best_standard_error, self.choice_tolerance, self._incumbent_name()
            )
            adopted, reason = choice.adopt, choice.reason
            if adopted:
                self.remember(self.last_val, self._candidate_standard_error, round_index)
        self.network.load_state_dict(self.best_weights)
        if is_main_process():
            self.logger.info(f"round {round_index}: {reason}")
        return {"model_choice": "adopted" if adopted else "kept", "model_choice_reason": reason}

    def state_dict(self) -> dict:
        """The incumbent (score, standard error, round, weights) and the weight average, so a resumed run
        chooses as an uninterrupted one."""
        state = {
            "best_val": self.best_val,
            "best_standard_error": self.best_standard_error,
            "best_round": float(self.best_round),
            "last_val": self.last_val,
            **{f"best_weights.{k}": v for k, v in self.best_weights.items()},
        }
        if self.weight_average is not None:
            state.update({f"weight_average.{k}": v for k, v in self.weight_average.state_dict().items()})
        if self.unqueried == "pseudo_label":
            state["pseudo_labels"] = self.pseudo_labels.clone()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        self.best_val = float(state_dict["best_val"])
        # checkpoints written before issue 11 hold only the best score and weights
        self.best_standard_error = float(state_dict.get("best_standard_error", float("nan")))
        self.best_round = int(state_dict.get("best_round", 0))
        self.last_val = float(state_dict.get("last_val", float("nan")))
        prefix = "best_weights."
        self.best_weights = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if self.weight_average is not None:
            prefix = "weight_average."
            average = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
            if average:
                self.weight_average.load_state_dict(average)
        if "pseudo_labels" in state_dict:
            self.pseudo_labels = state_dict["pseudo_labels"].clone().long()

    # ------------------------------------------------------------------------------------------ metrics
    def evaluate(self, state: RoundState) -> dict:
        """Validation and test metrics of the current model (plus simulation metrics), also sent to TensorBoard."""
        metrics: dict = {}
        for split, loader in (("val", self.val_loader), ("test", self.test_loader)):
            if loader is None or len(loader.dataset) == 0:  # a manifest without test rows: phase 1 warned already
                continue
            report = evaluate_loader(self.network, loader, len(self.class_names), self.device)
            for key in ("balanced_accuracy", "macro_f1", "mcc", "auroc"):
                metrics[f"{split}_{key}"] = float(report[key])
            metrics[f"{split}_per_class_recall"] = [float(r) for r in report["per_class_recall"]]
            metrics[f"{split}_confusion_matrix"] = [[int(n) for n in row] for row in report["confusion_matrix"]]
            if self.writer is not None and split == "val":
                self._log_confusion_matrix(report["confusion_matrix"], state)
        if self.true_labels is not None:
            metrics.update(self.simulation_metrics(state))
        if self.writer is not None:
            step = state.budget_spent
            for key, value in metrics.items():
                if isinstance(value, float) and math.isfinite(value):
                    self.writer.add_scalar(round_tag(key), value, step)
            self.writer.flush()
        return metrics

    def _log_confusion_matrix(self, matrix: list, state: RoundState) -> None:
        """The validation confusion matrix of this round's model, as ``val/confusion_matrix``."""
        from alr_monai.plots import confusion_matrix_figure, figure_to_array

        title = f"validation after round {state.round} ({state.budget_spent} labels spent)"
        image = figure_to_array(confusion_matrix_figure(matrix, self.class_names, title))
        self.writer.add_image("val/confusion_matrix", image, state.budget_spent, dataformats="HWC")

    def simulation_metrics(self, state: RoundState) -> dict:
        """Errors found, the pool's noise rate and the pseudo-labels' accuracy, from the simulation's truth
        (reported, never trained on)."""
        truth = self.true_labels
        queried = [i for ids in state.queried.values() for i in ids]
        position = {sample_id: i for i, sample_id in enumerate(self.ids)}
        answered = [position[i] for i in queried if state.source[position[i]] in ("expert", "oracle", "excluded")]
        errors_found = sum(self.given_labels[i] != truth[i] for i in answered)
        pool = self.pool(state)
        pool_noise = sum(self.given_labels[i] != truth[i] for i in pool) / len(pool) if pool else float("nan")
        current_noise = sum(
            state.current_labels[i] != truth[i] for i in range(len(truth)) if state.current_labels[i] >= 0
        ) / max(sum(label >= 0 for label in state.current_labels), 1)
        metrics = {"errors_found": int(errors_found), "pool_noise_rate": pool_noise, "label_noise_rate": current_noise}
        if self.recut is not None:
            metrics.update(self.recut.simulation_metrics(state.current_labels, self._answered(state), truth))
            trusted = self.trusted_mask(state)
            kept = [i for i, t in enumerate(trusted) if t and state.current_labels[i] >= 0]
            if kept:
                metrics["trusted_precision"] = sum(state.current_labels[i] == truth[i] for i in kept) / len(kept)
        pseudo = self._pseudo_labelled(state)
        if pseudo:
            metrics["pseudo_label_accuracy"] = sum(int(self.pseudo_labels[i]) == truth[i] for i in pseudo) / len(pseudo)
        return metrics

    # ------------------------------------------------------------------------------------------ round table
    def round_rows(self, state: RoundState) -> list[dict]:
        """One row per round (round 0 = phase 1's model): cumulative labels spent and changed, and the metrics."""
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
                    "model": _model_cell(entry["round"], metrics),
                    "test_per_class_recall": metrics.get("test_per_class_recall", []),
                }
            )
        return rows

    def round_table_markdown(self, state: RoundState) -> str:
        """The round table as markdown: labels spent, errors found, yield, pool noise and metrics."""
        rows = self.round_rows(state)
        lines = [markdown_table(ROUND_COLUMNS, [[row[c] for c in ROUND_COLUMNS] for row in rows], format_cell)]
        recall_rows = [r for r in rows if r["test_per_class_recall"]]
        if recall_rows:
            lines += ["", "Per-class test recall by round:", ""]
            table = [[row["round"], *row["test_per_class_recall"]] for row in recall_rows]
            header = ["round", *(markdown_escape(name) for name in self.class_names)]  # no HTML from a class name
            lines.append(markdown_table(header, table, format_cell))
        return "\n".join(lines) + "\n"

    def round_line(self, state: RoundState, round_index: int) -> str:
        """One console line for a closed round: its answers, the labels spent so far, the closing model's scores
        and the model choice, e.g. ``round 2/5 | 100 answers (97 changed, 0 excluded, 0 skipped) | 200 labels spent
        | val 0.673 | test 0.672 | adopted: val 0.673 >= round 1's model 0.649``."""
        entry = next(e for e in state.history if e["round"] == round_index)
        metrics = entry.get("metrics") or {}
        parts = [
            f"round {round_index}/{self.num_rounds}",
            f"{entry['labels_spent']} answers ({entry['labels_changed']} changed, {entry['excluded']} excluded, "
            f"{entry['skipped']} skipped)",
            f"{entry['budget_spent']} labels spent",
        ]
        for split in ("val", "test"):
            value = metrics.get(f"{split}_balanced_accuracy")
            if isinstance(value, float) and math.isfinite(value):
                parts.append(f"{split} {value:.3f}")
        if metrics.get("model_choice_reason"):
            parts.append(metrics["model_choice_reason"])
        return " | ".join(parts)

    def write_round_table(self, state: RoundState) -> None:
        """Write rounds.csv and rounds.md (atomically)."""
        rows = self.round_rows(state)
        atomic_write_csv(self.dir / "rounds.csv", rows, ROUND_COLUMNS)
        atomic_write_text(self.dir / "rounds.md", self.round_table_markdown(state))

    # ------------------------------------------------------------------------------------------ query sheet
    def _write_query_page(self, round_index: int, query_path: Path, examples_per_class: int = 3) -> Path | None:
        """Write the round's query sheet (round_<k>.html, see :mod:`alr_monai.relabel.query_page`) beside its
        query CSV, from the CSV's own rows so the page saves exactly that file's columns.

        An image that cannot be loaded shows its reason on the page. Any other failure is logged as a warning
        and returns None: the CSV alone still answers the round, so the sheet never stops it.
        """
        import shlex

        from alr_monai.relabel.query_page import render_picture, write_query_page
        from alr_monai.utils import read_csv

        page_path = query_path.with_suffix(".html")
        try:
            header, rows = read_csv(query_path)
            position = {sample_id: i for i, sample_id in enumerate(self.ids)}

            def picture(index: int | None):
                if index is None:
                    return "not in the training set"
                try:
                    image = self.scoring_dataset[index]["image"]
                except Exception as error:  # a file that does not decode costs its picture, not the round
                    return f"could not load: {type(error).__name__}: {error}"
                # manifest images come from MONAI's file readers, whose first spatial axis is x (columns)
                return render_picture(image, x_first=bool(self.image_paths and self.image_paths[index]))

            state = self.load_state()
            queried = {position[row["id"]] for row in rows if row["id"] in position}
            # examples: trusted samples by current label (phase 1's clean selection and every expert answer),
            # a seeded draw per round so the expert sees other examples each round
            members: dict[int, list[int]] = {label: [] for label in range(len(self.class_names))}
            for i, (trusted, current) in enumerate(zip(state.trusted, state.current_labels, strict=True)):
                if trusted and current >= 0 and i not in queried:
                    members[current].append(i)
            generator = torch.Generator().manual_seed(self.seed * 1000 + round_index)
            examples = {}
            for label, indices in members.items():
                order = torch.randperm(len(indices), generator=generator)[:examples_per_class].tolist()
                examples[label] = [picture(indices[k]) for k in sorted(order)]
            images = [picture(position.get(row["id"])) for row in rows]
            originals = self._original_pictures([position.get(row["id"]) for row in rows])
            write_query_page(
                page_path,
                rows,
                images,
                self.class_names,
                examples,
                columns=header,
                round_index=round_index,
                answer_command=f"alr answer <downloaded file> --run_dir {shlex.quote(str(self.dir.parent))}",
                originals=originals,
                score_help=score_meaning(self.acquisition),
            )
        except Exception as error:
            self.logger.warning(
                f"round {round_index}: could not write the query sheet {page_path} ({type(error).__name__}: "
                f"{error}); answer with {query_path} instead"
            )
            return None
        self.logger.info(f"round {round_index}: wrote the query sheet {page_path} (open it in a web browser)")
        return page_path

    def _original_pictures(self, indices: Sequence[int | None]) -> list[object]:
        """The query sheet's original images: each queried file read at its own resolution with the run's intensity
        (the scoring chain's loader and intensity steps, :func:`alr_monai.data.transforms.original_image_transforms`),
        or a one-line note where there is no file (MedMNIST arrays)."""
        from alr_monai.data.transforms import original_image_transforms
        from alr_monai.relabel.query_page import Picture, render_original, slices_per_volume

        found = original_image_transforms(getattr(self.scoring_dataset, "transform", None))
        if found is None or not self.image_paths:
            note = "no original file (in-memory .npz data such as MedMNIST): the network input above is the image"
            return [Picture(note=note) for _ in indices]
        transform, scaled = found
        max_slices = slices_per_volume(len(indices))  # the page's volumes share a slice budget
        originals: list[object] = []
        for index in indices:
            path = self.image_paths[index] if index is not None else ""
            if not path:
                originals.append(Picture(note="no single original file for this sample"))
                continue
            try:
                originals.append(
                    render_original(transform({"image": path})["image"], scaled=scaled, max_slices=max_slices)
                )
            except Exception as error:  # a file that does not decode costs its original, not the page
                originals.append(f"could not load {path}: {type(error).__name__}: {error}")
        return originals


def round_tag(key: str) -> str:
    """The TensorBoard tag of a round metric: phase 1's tag for the same quantity where one exists.

    ``val_balanced_accuracy`` -> ``val/balanced_accuracy``, ``test_macro_f1`` -> ``test/macro_f1``, and the
    metrics only rounds have -> ``relabel/<key>`` (``relabel/pool_noise_rate``).
    """
    for split in ("val", "test"):
        if key.startswith(split + "_"):
            return f"{split}/{key.removeprefix(split + '_')}"
    return f"relabel/{key}"


def _model_cell(round_index: int, metrics: dict) -> str:
    """The round table's ``model`` column: phase 1, adopted, or kept (the reason is in state.json's history)."""
    if round_index == 0:
        return "phase 1"
    return str(metrics.get("model_choice", ""))
