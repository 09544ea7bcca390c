"""Resume an interrupted run from its newest checkpoint."""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint

from alr_monai.utils import atomic_torch_save, remove_stray_temp_files

CHECKPOINT_PATTERN = re.compile(r"checkpoint_epoch=(\d+)\.pt$")


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The ``checkpoint_epoch=<N>.pt`` with the largest N in ``ckpt_dir``, or None (readable or not)."""
    files = checkpoint_files(ckpt_dir)
    return files[0][1] if files else None


class EngineBestMetric:
    """Makes an evaluator's best metric and its epoch part of a checkpoint, so resuming does not forget them."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def state_dict(self) -> dict:
        state = self.engine.state
        return {"best_metric": float(state.best_metric), "best_metric_epoch": int(state.best_metric_epoch)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.engine.state.best_metric = float(state_dict["best_metric"])
        self.engine.state.best_metric_epoch = int(state_dict["best_metric_epoch"])


class ReseedTransformsHandler:
    """Reseeds a random transform chain, and torch's global RNG, at the start of every epoch with ``seed + epoch``.

    Augmentation and dropout masks (which draw from the global RNG) then depend only on (seed, epoch), not on how
    many random numbers earlier epochs drew, so a run resumed from a checkpoint trains exactly as the
    uninterrupted run would have. Phase 1 and phase 2 both attach it.

    Args:
        transform: the training transform chain (``set_random_state``), or None to reseed only torch.
        seed: base seed.
        global_rng: also reseed torch's global RNG (dropout during training).
    """

    def __init__(self, transform=None, seed: int = 0, global_rng: bool = True) -> None:
        self.transform = transform
        self.seed = int(seed)
        self.global_rng = global_rng

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        seed = self.seed + engine.state.epoch
        if self.transform is not None:
            self.transform.set_random_state(seed=seed)
        if self.global_rng:
            torch.manual_seed(seed)


class BestModelSaver:
    """Writes the network's state dict (bare, as MONAI bundles keep ``models/model.pt``) to ``path`` whenever an evaluator's key metric reaches a new best.

    It reads the evaluator's ``best_metric_epoch`` (MONAI updates it before handlers run), which a run
    checkpoint restores through :class:`EngineBestMetric`; so after a resume a worse validation never
    replaces the best model. Written atomically.
    """

    def __init__(self, network: torch.nn.Module, path: str | Path) -> None:
        self.network = network
        self.path = Path(path)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if idist.get_rank() == 0 and engine.state.best_metric_epoch == engine.state.epoch:
            atomic_torch_save(self.path, self.network.state_dict())


class CheckpointError(ValueError):
    """No checkpoint in a folder can be read (each was cut short or damaged)."""


def checkpoint_files(ckpt_dir: str | Path) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of every ``checkpoint_epoch=<N>.pt`` in ``ckpt_dir``, newest first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := CHECKPOINT_PATTERN.search(p.name))]
    return sorted(found, reverse=True)


def read_latest_checkpoint(ckpt_dir: str | Path, map_location=None) -> tuple[Path | None, dict | None, list[str]]:
    """Read the newest readable checkpoint of ``ckpt_dir``, skipping any that cannot be read.

    Returns:
        The file read (None if the folder holds no checkpoint), its content, and one "name (reason)" entry per
        newer file that was skipped as unreadable.

    Raises:
        CheckpointError: checkpoints exist but none can be read; the message names each and how to go on.
    """
    skipped: list[str] = []
    for _epoch, path in checkpoint_files(ckpt_dir):
        try:
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as error:  # a torn or empty file fails in many ways (EOFError, RuntimeError, ...)
            size = path.stat().st_size if path.exists() else 0
            reason = str(error).split(". ")[0][:120] or "file ends early"  # torch's zip errors run on for lines
            skipped.append(f"{path.name} ({size} bytes: {type(error).__name__}: {reason})")
            continue
        if not isinstance(checkpoint, dict):
            skipped.append(f"{path.name} (not a checkpoint dictionary)")
            continue
        return path, checkpoint, skipped
    if skipped:
        raise CheckpointError(
            f"no checkpoint in {ckpt_dir} can be read, so this run cannot resume: " + "; ".join(skipped) + ". "
            "They were cut short by a crash (older versions of alr_monai saved checkpoints in place) or damaged "
            "on disk. To start this phase over, delete those files (or set resume to false, which replaces them); "
            "the run's other outputs are rewritten as training proceeds."
        )
    return None, None, skipped


def _unwrap(obj):
    return obj.module if isinstance(obj, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)) else obj


class RunCheckpointer:
    """Saves the whole run state every ``save_interval`` epochs and, at start, resumes from the newest good save.

    The checkpoint holds the trainer's epoch and iteration (the engine this handler is attached to, added
    here so a bundle config needs no circular reference to its own trainer), plus ``objects``: networks, the
    optimizer and every stateful handler (VoG buffers, selection state). A killed run therefore continues
    where it stopped. Files are ``checkpoint_epoch=<N>.pt``, written atomically through
    :func:`~alr_monai.utils.atomic_torch_save` (MONAI's ``CheckpointSaver`` writes in place, so a kill during a
    save left a 0-byte file that every rerun then failed on). The newest ``n_saved`` are kept; at start the
    newest readable one is loaded, and any newer file that cannot be read is named in a warning and skipped.
    Temporary files of an interrupted save are deleted. Attach it LAST so the epoch's save happens after every
    other handler has finished that epoch.

    Args:
        ckpt_dir: folder of the per-epoch checkpoints.
        objects: name -> object with ``state_dict``/``load_state_dict``.
        resume: load the newest checkpoint at start if one exists; False starts fresh (and older files are
            replaced as the new run saves).
        save_interval: epochs between saves.
        n_saved: how many checkpoints to keep (at least 2, so one damaged file leaves an older one to resume).
        map_location: passed to ``torch.load``.
    """

    def __init__(
        self,
        ckpt_dir: str | Path,
        objects: dict,
        resume: bool = True,
        save_interval: int = 1,
        n_saved: int = 2,
        map_location=None,
    ) -> None:
        if n_saved < 1 or save_interval < 1:
            raise ValueError(f"n_saved and save_interval must be >= 1, got {n_saved} and {save_interval}")
        self.ckpt_dir = Path(ckpt_dir)
        self.objects = dict(objects)
        self.resume = resume
        self.save_interval = save_interval
        self.n_saved = n_saved
        self.map_location = map_location
        self.resumed_from: Path | None = None
        self.skipped: list[str] = []
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        state = {"trainer": engine, **self.objects}
        engine.add_event_handler(Events.STARTED, self._resume, state)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self._save, state)

    def checkpoint_path(self, epoch: int) -> Path:
        return self.ckpt_dir / f"checkpoint_epoch={epoch}.pt"

    def _save(self, engine: Engine, state: dict) -> None:
        # Every rank builds its state dicts (a handler may gather across ranks); rank 0 writes.
        checkpoint = {name: _unwrap(obj).state_dict() for name, obj in state.items()}
        if idist.get_rank() != 0:
            return
        epoch = engine.state.epoch
        atomic_torch_save(self.checkpoint_path(epoch), checkpoint)
        kept = 0
        for other_epoch, path in checkpoint_files(self.ckpt_dir):
            # A file newer than this epoch belongs to an abandoned timeline (an unreadable save that was skipped
            # at resume, or a run restarted with resume false): it must not be resumed from later.
            if other_epoch <= epoch and kept < self.n_saved:
                kept += 1
                continue
            path.unlink(missing_ok=True)

    def _resume(self, engine: Engine, state: dict) -> None:
        if idist.get_rank() == 0:
            for path in remove_stray_temp_files(self.ckpt_dir, recursive=False):
                self.logger.info(f"removed {path}, left by an interrupted checkpoint save")
        if not self.resume:
            return
        path, checkpoint, self.skipped = read_latest_checkpoint(self.ckpt_dir, self.map_location)
        if self.skipped:
            message = f"skipped unreadable checkpoint(s) in {self.ckpt_dir}: {'; '.join(self.skipped)}; " + (
                f"resuming from {path.name}" if path is not None else "starting over"
            )
            self.logger.warning(message)
            warnings.warn(message, stacklevel=2)
        if path is None:
            return
        prior_max_epochs = engine.state.max_epochs
        try:
            Checkpoint.load_objects(to_load=state, checkpoint=checkpoint)
        except (KeyError, RuntimeError, ValueError) as error:
            raise ValueError(
                f"checkpoint {path} does not fit this run ({error}); was it made with other settings? Resume with "
                "the settings it was made with, or set resume to false to start over"
            ) from error
        if prior_max_epochs is not None and engine.state.epoch > prior_max_epochs:
            raise ValueError(
                f"checkpoint {path} is at epoch {engine.state.epoch}, past max_epochs {prior_max_epochs}; "
                "raise max_epochs to train further"
            )
        engine.state.max_epochs = prior_max_epochs
        self.resumed_from = path
        self.logger.info(f"resumed from {path} at epoch {engine.state.epoch}")
