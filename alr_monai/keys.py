"""The bundle keys a user may set (``alr train --max_epochs 5``, ``--relabel#acquisition margin``): one table.

Each key names the bundle config that defines it; its default is read from that config, so the CLI's help, the
bundle docs (``bundles/alr_classification/docs/README.md``, whose key tables :func:`markdown_table` writes) and the
configs cannot drift apart. The CLI refuses any key not in this table (with the closest known key) and any value
a key cannot take (with the accepted choices) before anything runs. Keys outside the table are internal wiring:
change those with a preset .json (``alr train --preset my.json``) or ``python -m monai.bundle run``.

Phases: ``train`` keys are phase 1 (``alr train``); ``manifest`` keys exist only with ``--manifest``
(``train_manifest.json``); ``relabel`` keys are phase 2 (``alr relabel`` / ``alr query``).
"""

from __future__ import annotations

import difflib
import json
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

__all__ = [
    "KEYS",
    "Key",
    "KeyError_",
    "check_overrides",
    "closest",
    "config_default",
    "keys_for",
    "markdown_table",
]

# Choices of enumerations, kept here so help needs no torch import; tests check them against the modules.
NOISE_KINDS = ("symmetric", "pairflip", "confusion", "instance", "given")
TRUSTED_RULES = ("any", "all", "class_cut")
NOISE_ESTIMATION_METHODS = ("gmm", "confident_joint_val", "confusion_inversion", "prototype_matching", "ensemble")
RANK_BY = ("loss", "prototype", "loss+prototype")
VOG_KEEP = ("low", "high")
VOG_DTYPES = ("float32", "float16")
ACQUISITIONS = (
    "random",
    "entropy",
    "least_confidence",
    "margin",
    "bald",
    "coreset",
    "label_quality",
    "suspect_entropy",
)
RECIPES = ("coteaching", "trusted")
MODEL_CHOICES = ("best", "tolerant")
UNQUERIED_RULES = ("drop", "pseudo_label")
QUOTA_MODES = ("off", "given", "predicted")
CONSENSUS_RULES = ("majority", "unanimous")
LR_SCHEDULES = ("constant", "cosine")
MODES = ("simulation", "interactive")
INTENSITIES = ("minmax", "none")
AUGMENT_ON = ("batch", "sample")
CACHE_POLICIES = ("memory", "disk", "none")
SAMPLERS = ("shuffle", "class_balanced")
NETWORK_NAMES = ("resnet18", "resnet34", "resnet50", "densenet121", "efficientnet-b0")


class KeyError_(ValueError):
    """A bundle key or value the CLI refuses; the message names the key and what to do."""


@dataclass(frozen=True)
class Key:
    """One user-settable bundle key.

    Attributes:
        name: the bundle key, ``#`` separating levels (``vog#mix_ratio``).
        config: the bundle config file that defines it (and its default).
        phase: ``train``, ``manifest`` or ``relabel`` (see the module docstring).
        kind: value type: ``int``, ``float``, ``bool``, ``str``, ``intensity``, ``shape`` or ``spacing``; ``?`` appended
            (``float?``) allows null.
        meaning: one line.
        choices: accepted values of an enumeration (empty = any value of ``kind``).
        minimum: smallest accepted number, if any.
        maximum: largest accepted number, if any.
        shown_default: the default as shown, where the config holds an expression.
        fixed_in_rounds: phase 2 only: changing it would change rounds already written, so a resume may not.
    """

    name: str
    config: str
    phase: str
    kind: str
    meaning: str
    choices: tuple = ()
    minimum: float | None = None
    maximum: float | None = None
    shown_default: str | None = None
    fixed_in_rounds: bool = True

    @property
    def default(self) -> Any:
        """The default from the bundle config (the config's expression text when it is one)."""
        return config_default(self.config, self.name)

    def default_text(self) -> str:
        """The default as help and docs show it."""
        if self.shown_default is not None:
            return self.shown_default
        return _show(self.default)

    def check(self, value: Any) -> Any:
        """Return ``value`` if this key accepts it.

        Raises:
            KeyError_: naming the key, the value and what it accepts.
        """
        if isinstance(value, str) and value.strip().lower() in ("null", "none"):
            value = None
        elif isinstance(value, str) and value.strip().lower() in ("true", "false"):
            value = value.strip().lower() == "true"
        kind = self.kind.rstrip("?")
        if value is None:
            if self.kind.endswith("?"):
                return value
            raise KeyError_(f"--{self.name} cannot be null; expected {self.expected()}")
        ok = {
            "int": lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool),
            "float": lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool),
            "bool": lambda v: isinstance(v, bool),
            "str": lambda v: isinstance(v, str) and bool(v.strip()),
            "strlist": lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v) and bool(v),
            "shape": lambda v: (
                isinstance(v, (list, tuple))
                and bool(v)
                and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v)
            ),
            "intensity": _intensity_ok,
            "spacing": lambda v: (
                isinstance(v, (list, tuple))
                and len(v) == 3
                and all(isinstance(x, numbers.Real) and not isinstance(x, bool) and x > 0 for x in v)
            ),
        }[kind](value)
        if ok and self.choices and value not in self.choices:
            hint = closest(str(value), [str(c) for c in self.choices])
            did_you_mean = f" (did you mean {hint}?)" if hint else ""
            raise KeyError_(
                f"--{self.name} {value!r} is not accepted{did_you_mean}; choose one of: "
                + ", ".join(str(c) for c in self.choices)
            )
        if ok and (
            (self.minimum is not None and value < self.minimum) or (self.maximum is not None and value > self.maximum)
        ):
            raise KeyError_(f"--{self.name} {value!r} is out of range; expected {self.expected()}")
        if not ok:
            raise KeyError_(f"--{self.name} {value!r} is not accepted; expected {self.expected()}")
        return value

    def expected(self) -> str:
        """What the key accepts, in words."""
        if self.choices:
            return "one of " + ", ".join(str(c) for c in self.choices)
        words = {
            "int": "an integer",
            "float": "a number",
            "bool": "true or false",
            "str": "a non-empty string",
            "strlist": "a list of names, e.g. \"['a','b']\"",
            "shape": 'a list of positive sizes, e.g. "[64,64]"',
            "intensity": "'minmax', 'none' or {'window': [center, width]}",
            "spacing": 'three positive spacings in mm (x, y, z), e.g. "[1.0,1.0,2.0]"',
        }[self.kind.rstrip("?")]
        if self.minimum is not None and self.maximum is not None:
            words += f" in [{self.minimum:g}, {self.maximum:g}]"
        elif self.minimum is not None:
            words += f" >= {self.minimum:g}"
        return words + (" or null" if self.kind.endswith("?") else "")


def _intensity_ok(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in INTENSITIES
    if isinstance(value, Mapping) and set(value) == {"window"}:
        window = value["window"]
        return (
            isinstance(window, (list, tuple)) and len(window) == 2 and all(isinstance(x, (int, float)) for x in window)
        )
    return False


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


TRAIN, MANIFEST, RELABEL = "train.json", "train_manifest.json", "relabel.json"

KEYS: tuple[Key, ...] = (
    # ---------------------------------------------------------------------------------------------- phase 1
    Key(
        "device",
        TRAIN,
        "train",
        "str",
        "torch device, e.g. cpu or cuda:1",
        shown_default="cuda:0 if available, else cpu",
    ),
    Key(
        "amp",
        TRAIN,
        "train",
        "bool",
        "automatic mixed precision in training and validation (CUDA only; on another device it is off, logged once)",
    ),
    Key("seed", TRAIN, "train", "int", "determinism, the long-tail draw and the injected noise", minimum=0),
    Key("max_epochs", TRAIN, "train", "int", "phase-1 training epochs", minimum=1),
    Key("batch_size", TRAIN, "train", "int", "training batch size (phase 1 and recalibration)", minimum=1),
    Key("learning_rate", TRAIN, "train", "float", "Adam learning rate of phase 1", minimum=0),
    Key(
        "tensorboard_image_interval",
        TRAIN,
        "train",
        "int",
        "draw TensorBoard's per-class charts and confusion matrix every N epochs (and at the last)",
        minimum=1,
    ),
    Key(
        "stability#lr_schedule",
        TRAIN,
        "train",
        "str",
        "phase-1 learning rate: constant, or cosine-annealed over the max_epochs",
        choices=LR_SCHEDULES,
    ),
    Key(
        "stability#min_lr_fraction",
        TRAIN,
        "train",
        "float",
        "cosine schedule: the last iteration's rate as a fraction of learning_rate",
        minimum=0,
        maximum=1,
    ),
    Key(
        "stability#average_epochs",
        TRAIN,
        "train",
        "float",
        "validate, save and test an average of the weights over about this many epochs (0 = the last step's)",
        minimum=0,
    ),
    Key(
        "stability#average_start_epoch",
        TRAIN,
        "train",
        "int?",
        "first epoch the average covers (null: the first after the forget-rate ramp)",
        minimum=1,
    ),
    Key(
        "val_interval",
        TRAIN,
        "train",
        "int",
        "validate every N epochs; the best validation balanced accuracy picks the model",
        minimum=1,
    ),
    Key("resume", TRAIN, "train", "bool", "resume from the newest checkpoint in the run folder (false: refuse to)"),
    Key(
        "augment",
        TRAIN,
        "train",
        "bool",
        "random left-right flips during training (augment_rotate90 and augment_shift add more)",
    ),
    Key("augment_rotate90", TRAIN, "train", "bool", "with augment: also up-down flips and random 90-degree rotations"),
    Key(
        "augment_shift",
        TRAIN,
        "train",
        "int",
        "with augment: random shifts of up to N pixels (pad and crop back)",
        minimum=0,
    ),
    Key(
        "augment_on",
        TRAIN,
        "train",
        "str",
        "batch: augment whole batches on the device (fast); sample: per sample in the data loader (MONAI transforms)",
        choices=AUGMENT_ON,
    ),
    Key(
        "num_workers",
        TRAIN,
        "train",
        "int",
        "DataLoader worker processes of every loader (0: load in the main process)",
        minimum=0,
    ),
    Key("pin_memory", TRAIN, "train", "bool", "pinned host memory for the loaders (used on CUDA only)"),
    Key(
        "cache",
        TRAIN,
        "train",
        "str",
        "keep the preprocessed images in memory, on disk (cache_dir; for data larger than RAM) or none; same results",
        choices=CACHE_POLICIES,
    ),
    Key("cache_rate", TRAIN, "train", "float", "cache memory: share of the images kept in RAM", minimum=0, maximum=1),
    Key(
        "cache_dir",
        TRAIN,
        "train",
        "str",
        "cache disk: the folder of the cached images (reused by later runs with the same preprocessing)",
        shown_default="<output_dir>/cache",
    ),
    Key("dataset_dir", TRAIN, "train", "str?", "a folder with bloodmnist.npz; null = the embedded subset"),
    Key(
        "pretrained",
        TRAIN,
        "train",
        "str?",
        "start both peers from these weights: a phase-1 models/model.pt, a MONAI bundle's models/model.pt (one "
        "network's state dict) or a checkpoint holding one; a head with another class count is re-initialised",
    ),
    Key(
        "pretrained_strict",
        TRAIN,
        "train",
        "bool",
        "refuse pretrained weights that do not fit the network, naming every key; false loads those that fit",
    ),
    Key(
        "dataset_path",
        TRAIN,
        "train",
        "str?",
        "any MedMNIST-layout .npz; null = dataset_dir's, else the embedded subset",
        shown_default="null (from dataset_dir)",
    ),
    Key(
        "imbalance_ratio",
        TRAIN,
        "train",
        "float?",
        "long-tail the training split to this ratio (the embedded set is already IR 20)",
        minimum=1,
    ),
    Key(
        "simulation#noise_rate",
        TRAIN,
        "train",
        "float",
        "share of training labels the simulation corrupts",
        minimum=0,
        maximum=1,
    ),
    Key(
        "simulation#noise_kind",
        TRAIN,
        "train",
        "str",
        "injected noise: symmetric (any other class), pairflip (the next class), confusion (between classes a "
        "model confuses), instance (image-dependent, Xia et al. 2020), or given (the data's own noisy labels: "
        "the .npz array train_labels_noisy; noise_rate is ignored)",
        choices=NOISE_KINDS,
    ),
    Key(
        "simulation#confusion_matrix",
        TRAIN,
        "train",
        "str?",
        "noise kind confusion: a C x C confusion matrix file (.csv such as evaluation_test_confusion.csv, .json, "
        ".npy); null = the out-of-fold confusions of a softmax regression fitted on the training images",
    ),
    Key(
        "max_per_class",
        TRAIN,
        "train",
        "int?",
        "cap on the largest training class (the long tail, if any, runs from it); val and test are not capped",
        minimum=1,
    ),
    Key("simulation#noise_seed", TRAIN, "train", "int", "seed of the injected noise", shown_default="seed", minimum=0),
    Key(
        "network_name",
        TRAIN,
        "train",
        "str?",
        "each peer's network: null = network_factory (small MONAI ResNet), or a MONAI classifier, 2D/3D, untrained",
        choices=NETWORK_NAMES,
    ),
    Key(
        "channels_last",
        TRAIN,
        "train",
        "bool",
        "channels-last memory format for the training network and batches: on for images (a CPU epoch about 20% "
        "faster), off for volumes (channels_last_3d was slower for ResNet-18/DenseNet-121 3D on a CPU)",
        shown_default="true in 2D, false in 3D",
    ),
    Key(
        "network_def#num_peers",
        TRAIN,
        "train",
        "int",
        "networks trained together: 2 = co-teaching, 1 = one network",
        choices=(1, 2),
    ),
    Key(
        "network_def#dropout",
        TRAIN,
        "train",
        "float",
        "dropout before the last linear layer (BALD needs > 0 in both phases)",
        minimum=0,
        maximum=0.99,
    ),
    Key(
        "network_factory#block_inplanes",
        TRAIN,
        "train",
        "shape",
        'the ResNet\'s width: channels of its 4 stages, e.g. "[32,64,128,256]" (relabel and issues reuse it)',
    ),
    Key(
        "network_factory#layers",
        TRAIN,
        "train",
        "shape",
        'the ResNet\'s depth: residual blocks in each of its 4 stages, e.g. "[2,2,2,2]"',
    ),
    Key(
        "coteaching#forget_rate",
        TRAIN,
        "train",
        "float?",
        "share of each batch dropped as noisy; null = estimate from the data",
        minimum=0,
        maximum=1,
    ),
    Key(
        "coteaching#num_gradual", TRAIN, "train", "int", "epochs over which the forget rate ramps up from 0", minimum=0
    ),
    Key("coteaching#exponent", TRAIN, "train", "float", "shape of the ramp (1 = linear)", minimum=0),
    Key(
        "coteaching#trusted_rule",
        TRAIN,
        "train",
        "str",
        "trusted set after the last epoch: kept by any peer, by all peers, or each given class's lowest-loss share (class_cut)",
        choices=TRUSTED_RULES,
    ),
    Key(
        "imbalance#sampler",
        TRAIN,
        "train",
        "str",
        "phase-1 batches: shuffle every sample once an epoch, or draw class-balanced (with replacement)",
        choices=SAMPLERS,
    ),
    Key(
        "imbalance#logit_adjustment",
        TRAIN,
        "train",
        "float",
        "tau of the logit-adjusted loss against the given labels' class prior (0 = plain cross-entropy)",
        minimum=0,
        maximum=3,
    ),
    Key(
        "noise_estimate#estimate_epoch",
        TRAIN,
        "train",
        "int",
        "epoch after which the noise rate is estimated",
        minimum=1,
    ),
    Key("noise_estimate#method", TRAIN, "train", "str", "noise-rate estimator", choices=NOISE_ESTIMATION_METHODS),
    Key("noise_estimate#per_class", TRAIN, "train", "bool", "estimate a noise rate per given class"),
    Key(
        "noise_estimate#latest_epoch",
        TRAIN,
        "train",
        "int?",
        "estimate once validation balanced accuracy stops rising (by < 0.02 an epoch), at the latest after this "
        "epoch (or the run's last); null = at estimate_epoch",
        minimum=1,
    ),
    Key(
        "noise_estimate#max_rate",
        TRAIN,
        "train",
        "float",
        "the highest rate any class is cut at: every given class keeps at least 1 - max_rate of its samples",
        minimum=0,
        maximum=0.99,
    ),
    Key(
        "noise_estimate#disagreement_tolerance",
        TRAIN,
        "train",
        "float",
        "ensemble: a class on which no majority of the estimators agrees within this is flagged (console, "
        "metrics.json, report); its rate stays the median",
        minimum=0,
        maximum=1,
    ),
    Key(
        "selection#per_class",
        TRAIN,
        "train",
        "bool",
        "cut each given class at its own estimated noise rate (false: one cut over the batch)",
    ),
    Key(
        "selection#rank_by",
        TRAIN,
        "train",
        "str",
        "score(s) that rank the samples to keep ('+' combines ranks)",
        choices=RANK_BY,
    ),
    Key("vog#num_snapshots", TRAIN, "train", "int", "K: epochs whose last-layer gradients VoG compares", minimum=2),
    Key("vog#class_normalise", TRAIN, "train", "bool", "normalise VoG within each class"),
    Key("vog#keep", TRAIN, "train", "str", "which VoG end is kept as clean", choices=VOG_KEEP),
    Key(
        "vog#mix_ratio",
        TRAIN,
        "train",
        "float",
        "share of each batch's kept samples chosen by VoG (0 = plain co-teaching)",
        minimum=0,
        maximum=1,
    ),
    Key(
        "vog#dtype",
        TRAIN,
        "train",
        "str",
        "storage of the gradient snapshots (float16 halves the memory)",
        choices=VOG_DTYPES,
    ),
    Key(
        "vog#buffer_device",
        TRAIN,
        "train",
        "str?",
        "where the VoG buffer lives (cpu keeps it out of GPU memory; null: the training device)",
    ),
    Key(
        "vog#sketch_dim",
        TRAIN,
        "train",
        "int?",
        "keep an m-value random projection of each gradient instead of its D + 1 values (null: exact VoG, "
        "K x (D + 1) values per sample and peer)",
        minimum=1,
    ),
    # ------------------------------------------------------------------------------- phase 1 on a manifest
    Key(
        "manifest_classes",
        MANIFEST,
        "manifest",
        "strlist?",
        "class names in index order; null = inferred from the labels",
    ),
    Key(
        "noisy_label_column",
        MANIFEST,
        "manifest",
        "str?",
        "a column of real noisy labels to train on, the label column being the truth (noise kind given: noise.csv, "
        "simulation metrics, alr relabel's oracle); null = train on label",
    ),
    Key("image_size", MANIFEST, "manifest", "shape", "every image is resized to this shape (spatial_dims entries)"),
    Key(
        "in_channels",
        MANIFEST,
        "manifest",
        "int",
        "network input channels (gray repeated, RGB averaged, alpha dropped)",
        minimum=1,
    ),
    Key(
        "intensity",
        MANIFEST,
        "manifest",
        "intensity",
        "'minmax', 'none' or {'window': [center, width]} (DICOM after rescale)",
    ),
    Key("spatial_dims", MANIFEST, "manifest", "int", "2 for images, 3 for volumes", choices=(2, 3)),
    Key(
        "channel_axis",
        MANIFEST,
        "manifest",
        "int?",
        "NIfTI with a 4th axis (MR sequences, time points): read it as channels (3 or -1); null refuses such files",
        choices=(3, -1),
    ),
    Key(
        "spacing",
        MANIFEST,
        "manifest",
        "spacing?",
        "volumes: resample to this voxel spacing in mm (x, y, z) before the resize; null keeps each volume's grid",
    ),
    Key(
        "orientation",
        MANIFEST,
        "manifest",
        "str?",
        "volumes: reorient to these axis codes (e.g. 'RAS') before spacing and resize; null keeps the stored order",
    ),
    Key(
        "sequences",
        MANIFEST,
        "manifest",
        "strlist?",
        "columns with one file per sequence (e.g. \"['image','t2','flair']\"), stacked as channels; null = image",
    ),
    Key(
        "drop_bad_images",
        MANIFEST,
        "manifest",
        "bool",
        "train without the rows whose image cannot be decoded (listed in dropped_images.csv); false refuses them",
    ),
    Key(
        "allow_patient_overlap",
        MANIFEST,
        "manifest",
        "bool",
        "accept a patient whose rows lie in more than one split (a leak, warned with counts); false refuses it",
    ),
    # ---------------------------------------------------------------------------------------------- phase 2
    Key(
        "relabel#acquisition", RELABEL, "relabel", "str", "how the pool is ranked for the expert", choices=ACQUISITIONS
    ),
    Key("relabel#round_budget", RELABEL, "relabel", "int", "samples queried per round", minimum=1),
    Key(
        "relabel#num_rounds",
        RELABEL,
        "relabel",
        "int",
        "relabel rounds (may be raised on resume to add rounds)",
        minimum=1,
        fixed_in_rounds=False,
    ),
    Key(
        "relabel#recalibration_epochs",
        RELABEL,
        "relabel",
        "int",
        "fine-tuning epochs after each round's answers",
        minimum=1,
    ),
    Key(
        "relabel#recipe",
        RELABEL,
        "relabel",
        "str",
        "trusted: train on the trusted set; coteaching: on every non-excluded sample",
        choices=RECIPES,
    ),
    Key("relabel#class_balanced", RELABEL, "relabel", "bool", "class-balanced sampling during recalibration"),
    Key(
        "relabel#audit_per_class",
        RELABEL,
        "relabel",
        "int",
        "random audit in the first round: this many samples of each given class from the trusted set and from the "
        "pool (within the budget); the answers correct each class's noise rate and re-cut the trusted set (0 = off)",
        minimum=0,
        fixed_in_rounds=True,
    ),
    Key(
        "relabel#audit_prior_strength",
        RELABEL,
        "relabel",
        "float",
        "pseudo-answers phase 1's per-class estimate is worth against the audit's answers",
        minimum=0,
        fixed_in_rounds=True,
    ),
    Key(
        "relabel#logit_adjustment",
        RELABEL,
        "relabel",
        "float",
        "tau of the logit-adjusted loss in recalibration (default: phase 1's imbalance#logit_adjustment)",
        minimum=0,
        maximum=3,
        shown_default="imbalance#logit_adjustment",
    ),
    Key("relabel#learning_rate", RELABEL, "relabel", "float", "Adam learning rate of recalibration", minimum=0),
    Key(
        "relabel#lr_schedule",
        RELABEL,
        "relabel",
        "str",
        "recalibration learning rate: constant, or cosine-annealed within each round",
        choices=LR_SCHEDULES,
    ),
    Key(
        "relabel#min_lr_fraction",
        RELABEL,
        "relabel",
        "float",
        "cosine schedule: the rate a round ends at, as a fraction of learning_rate",
        minimum=0,
        maximum=1,
    ),
    Key(
        "relabel#ema_decay",
        RELABEL,
        "relabel",
        "float",
        "average the weights over each round's steps with this decay (0 = off)",
        minimum=0,
        maximum=0.9999,
    ),
    Key(
        "relabel#class_quota",
        RELABEL,
        "relabel",
        "str",
        "split each round's budget over classes: the pool's given labels by their share, or the predicted labels evenly",
        choices=QUOTA_MODES,
    ),
    Key(
        "relabel#readers",
        RELABEL,
        "relabel",
        "int",
        "readers per round: each answers, the consensus decides, disagreements go to an adjudicator",
        minimum=1,
    ),
    Key(
        "relabel#consensus",
        RELABEL,
        "relabel",
        "str",
        "how several readers' answers are combined",
        choices=CONSENSUS_RULES,
    ),
    Key(
        "relabel#unqueried",
        RELABEL,
        "relabel",
        "str",
        "suspected samples the expert was not asked about: drop them, or pseudo_label the confident ones",
        choices=UNQUERIED_RULES,
    ),
    Key(
        "relabel#pseudo_label_threshold",
        RELABEL,
        "relabel",
        "float",
        "pseudo_label: the predicted probability a pseudo-label needs",
        minimum=0,
        maximum=1,
    ),
    Key(
        "relabel#model_choice",
        RELABEL,
        "relabel",
        "str",
        "which model closes a round: tolerant (the round's, unless clearly worse) or best (best epoch so far)",
        choices=MODEL_CHOICES,
    ),
    Key(
        "relabel#choice_tolerance",
        RELABEL,
        "relabel",
        "float",
        "tolerant choice: standard errors of validation a round's model may trail the incumbent",
        minimum=0,
    ),
    Key(
        "relabel#expert_error_rate",
        RELABEL,
        "relabel",
        "float",
        "simulation: the oracle's error rate",
        minimum=0,
        maximum=1,
    ),
    Key("relabel#mc_samples", RELABEL, "relabel", "int", "BALD: MC-dropout passes per sample", minimum=1),
    Key(
        "relabel#group_by_patient",
        RELABEL,
        "relabel",
        "bool",
        "order each query so a patient's images are together (needs patient ids; the samples asked stay the same)",
        # Only the order of the next query files changes, never what is asked, so a resume may change it.
        fixed_in_rounds=False,
    ),
)
_BY_NAME = {key.name: key for key in KEYS}
# Phase-1 keys that phase 2 also reads (the relabel overlay uses them), so alr relabel / alr query accept them.
RELABEL_ALSO = ("device", "batch_size", "amp", "num_workers", "pin_memory", "cache", "cache_rate", "cache_dir")
_RELABEL_ALSO_FIXED = {"batch_size"}


@cache
def _config(name: str) -> dict:
    from alr_monai.workflow import bundle_file

    return json.loads(open(bundle_file(name), encoding="utf-8").read())


def config_default(config: str, name: str) -> Any:
    """The value of ``name`` (``#``-separated) in bundle config file ``config``.

    Raises:
        KeyError: the config does not define it.
    """
    node: Any = _config(config)
    if name in node:  # overlays may define a nested key flat ("network_factory#spatial_dims")
        return node[name]
    for part in name.split("#"):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(f"{config} has no key {name!r}")
        node = node[part]
    return node


def keys_for(phases: Iterable[str]) -> list[Key]:
    """The keys of the given phases (``train``, ``manifest``, ``relabel``), in table order."""
    wanted = set(phases)
    also = RELABEL_ALSO if "relabel" in wanted else ()
    return [key for key in KEYS if key.phase in wanted or key.name in also]


def is_fixed_in_rounds(name: str) -> bool:
    """True for phase-2 settings that a resume may not change once rounds are written."""
    key = _BY_NAME.get(name)
    if key is None:
        return False
    return key.fixed_in_rounds if key.phase == "relabel" else name in _RELABEL_ALSO_FIXED


def closest(name: str, known: Sequence[str]) -> str | None:
    """The known name closest to ``name`` (difflib), or None when nothing is close."""
    matches = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    if matches:
        return matches[0]
    # "acquisiton" alone for "relabel#acquisition": compare the last level too.
    tails = {k.split("#")[-1]: k for k in known if "#" in k}
    matches = difflib.get_close_matches(name.split("#")[-1], list(tails), n=1, cutoff=0.75)
    return tails[matches[0]] if matches else None


def check_overrides(
    overrides: Mapping[str, Any], phases: Iterable[str], command: str, strict: bool = True
) -> dict[str, Any]:
    """Refuse keys outside ``phases`` and values a key cannot take; return the overrides unchanged otherwise.

    Args:
        overrides: bundle keys and values as given by the user.
        phases: the phases the command runs (see :func:`keys_for`).
        command: the command's name, for the messages (``train``).
        strict: refuse keys outside the table too (the command line does); False checks only the values of
            table keys, so Python callers may still override internal wiring as a bundle user can.

    Raises:
        KeyError_: naming the first bad key or value, the closest known key and what to do.
    """
    allowed = {key.name: key for key in keys_for(phases)}
    for name, value in overrides.items():
        key = allowed.get(name)
        if key is None:
            if strict:
                raise KeyError_(unknown_key_message(name, command, list(allowed)))
            continue
        key.check(value)
    return dict(overrides)


def unknown_key_message(name: str, command: str, known: Sequence[str]) -> str:
    """Why ``--name`` is refused by ``alr command`` and what to do instead."""
    other = _BY_NAME.get(name)
    if other is not None and other.phase == "manifest":
        return f"--{name} applies only to phase 1 on a manifest: add --manifest FILE.csv (see alr train --help)"
    if other is not None and other.phase == "relabel":
        return f"--{name} is a phase-2 setting: pass it to alr relabel or alr query (see alr relabel --help)"
    if other is not None:
        return (
            f"--{name} is a phase-1 setting: pass it to alr train (a finished phase 1 is not changed by alr {command})"
        )
    section = name.split("#")[0] + "#" if "#" in name else None
    siblings = [key for key in known if section and key.startswith(section)]
    tails = [key[len(section) :] for key in siblings] if section else []
    if 0 < len(siblings) <= 6 and not difflib.get_close_matches(name[len(section) :], tails, n=1, cutoff=0.75):
        # "--network_factory#width": no typo of a key of that section; name the ones it takes (a shared prefix
        # would otherwise make any sibling look "close")
        return (
            f"unknown option --{name} for alr {command}: the {section[:-1]} keys it takes are "
            f"{', '.join('--' + key for key in siblings)} (see alr {command} --help; any other key through a preset "
            "or python -m monai.bundle run)"
        )
    hint = closest(name, known)
    if hint is None:
        # A typo of a key another command takes: say so, or the user fixes the typo and still lands on a refusal.
        elsewhere = closest(name, list(_BY_NAME))
        hint = f"{elsewhere}, which alr {command} does not take" if elsewhere else None
    did_you_mean = f"did you mean --{hint}? " if hint else ""
    return f"unknown option --{name} for alr {command}: {did_you_mean}See alr {command} --help for the accepted keys"


def markdown_table(phases: Iterable[str]) -> str:
    """The key table of ``phases`` as markdown (key | default | choices | meaning), as the bundle docs hold it."""
    lines = ["| key | default | choices | meaning |", "|---|---|---|---|"]
    for key in keys_for(phases):
        if key.name in RELABEL_ALSO and key.phase != "relabel" and "train" not in set(phases):
            continue
        choices = ", ".join(str(c) for c in key.choices)
        lines.append(f"| `{key.name}` | {key.default_text()} | {choices} | {key.meaning} |")
    return "\n".join(lines) + "\n"


DOC_SECTIONS = {"train": ("train",), "manifest": ("manifest",), "relabel": ("relabel",)}


def render_docs(text: str) -> str:
    """``text`` (the bundle README) with every ``<!-- keys:NAME -->`` ... ``<!-- /keys:NAME -->`` block
    replaced by the current key table of that section (``train``, ``manifest``, ``relabel``).

    Raises:
        ValueError: a section's markers are missing.
    """
    for name, phases in DOC_SECTIONS.items():
        begin, end = f"<!-- keys:{name} -->", f"<!-- /keys:{name} -->"
        if begin not in text or end not in text:
            raise ValueError(f"the bundle docs lack the markers {begin} ... {end}")
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{begin}\n{markdown_table(phases)}{end}{tail}"
    return text


def main() -> None:
    """Rewrite the key tables of the bundle docs from this table: ``python -m alr_monai.keys``."""
    from pathlib import Path

    from alr_monai.workflow import bundle_dir

    path = Path(bundle_dir()) / "docs" / "README.md"
    text = path.read_text(encoding="utf-8")
    new = render_docs(text)
    if new != text:
        path.write_text(new, encoding="utf-8")
    print(f"{path}: key tables {'rewritten' if new != text else 'already current'}")


if __name__ == "__main__":
    main()
