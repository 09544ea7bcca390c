"""TensorBoard charts are drawn off the training loop, and every chart is written when the run returns."""

from __future__ import annotations

import threading
import time

import pytest
from ignite.engine import Engine, Events

from alr_monai.handlers import TensorBoardImageHandler

CLASSES = ["a", "b", "c"]


class SlowWriter:
    """Records add_image calls (tag, epoch, thread) and takes ``delay`` seconds for each, like a slow render."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.delay = delay
        self.fail = fail
        self.images: list[tuple[str, int, str]] = []

    def add_image(self, tag, image, epoch, dataformats="HWC") -> None:
        assert image.ndim == 3 and image.shape[2] == 3
        time.sleep(self.delay)
        if self.fail:
            raise OSError("disk full")
        self.images.append((tag, epoch, threading.current_thread().name))

    def flush(self) -> None:
        pass


def _engine(epochs: int, handler: TensorBoardImageHandler, seconds: list[float]) -> Engine:
    engine = Engine(lambda e, b: None)

    @engine.on(Events.EPOCH_COMPLETED)
    def metrics(e) -> None:
        e.state.metrics = {f"kept_fraction/{name}": 0.5 for name in CLASSES}

    handler.attach(engine)
    call = handler.__call__

    def timed(e) -> None:
        start = time.perf_counter()
        call(e)
        seconds.append(time.perf_counter() - start)

    # time what the loop waits for at each epoch end
    for event in (Events.EPOCH_COMPLETED, Events.COMPLETED):
        for position, (h, args, kwargs) in enumerate(engine._event_handlers[event]):
            if h == handler:
                engine._event_handlers[event][position] = (timed, args, kwargs)
    engine.state.max_epochs = epochs
    return engine


def test_charts_are_rendered_in_the_background_and_all_written_at_the_end():
    writer = SlowWriter(delay=0.3)
    handler = TensorBoardImageHandler(writer, CLASSES, interval=1)
    seconds: list[float] = []
    _engine(3, handler, seconds).run([0, 1], max_epochs=3)
    assert max(seconds) < 0.25  # the loop did not wait for the 0.3 s writes
    assert [(tag, epoch) for tag, epoch, _ in writer.images] == [
        ("selection/per_class_kept_fraction", 1),
        ("selection/per_class_kept_fraction", 2),
        ("selection/per_class_kept_fraction", 3),
    ]  # in epoch order, and all of them once run() returned
    assert {thread for _, _, thread in writer.images} != {threading.current_thread().name}


def test_in_loop_rendering_is_still_available():
    writer = SlowWriter()
    handler = TensorBoardImageHandler(writer, CLASSES, background=False)
    _engine(2, handler, []).run([0], max_epochs=2)
    assert [epoch for _, epoch, _ in writer.images] == [1, 2]
    assert {thread for _, _, thread in writer.images} == {threading.current_thread().name}


def test_an_error_in_the_background_surfaces_at_the_end_of_the_run():
    handler = TensorBoardImageHandler(SlowWriter(fail=True), CLASSES)
    with pytest.raises(OSError, match="disk full"):
        _engine(2, handler, []).run([0], max_epochs=2)
