"""alr_monai: Active Label Refinement for noisy, class-imbalanced medical image labels, on MONAI."""

from __future__ import annotations

__version__ = "0.1.0"
