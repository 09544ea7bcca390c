"""Peer methods the benchmark compares with: other tools a user would pick instead of alr_monai.

:mod:`alr_monai.baselines.cleanlab_peer` is cleanlab's confident learning (``CleanLearning``'s recipe) run with the
bundle's own network and CE training recipe. It needs the optional extra ``pip install alr_monai[benchmark]``
(cleanlab); this package imports cleanlab only when the peer runs.
"""

from __future__ import annotations

from .cleanlab_peer import run_cleanlab_peer, stratified_folds, subset_items

__all__ = ["run_cleanlab_peer", "stratified_folds", "subset_items"]
