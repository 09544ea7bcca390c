"""Training engines."""

from __future__ import annotations

from alr_monai.engines.coteaching import CoTeachingEvents, CoTeachingTrainer

__all__ = ["CoTeachingEvents", "CoTeachingTrainer"]
