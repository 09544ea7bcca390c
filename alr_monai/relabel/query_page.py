"""The query sheet: one self-contained HTML page per round, where the expert sees and answers the queried images.

``relabel/queries/round_<k>.html`` sits beside the round's query CSV. It holds everything inline (images as PNG
data URIs, CSS, JavaScript), so it opens from the file system with no server and no network. Per queried sample
it shows the image (a 2D image as it is, a 3D volume as three mid-slices), the given label, the model's
prediction and probability, the patient, and a few trusted examples of the given and of the predicted class.
Below, the original file (:func:`render_original`): a 2D image at its own resolution with the run's intensity window,
a volume's slices behind a slider, with brightness / contrast controls.
The expert picks a class, "exclude" or "skip", may add a comment, and saves an answers CSV: the query file's own
columns with ``expert_label`` and ``comment`` filled, which ``alr answer`` takes as it is.

Keys: 1-9 pick the class shown with that digit, ``x`` excludes, ``s`` skips, ``u`` clears, ``c`` writes a comment,
arrows or ``j``/``k`` move between samples, ``[``/``]`` change the original volume's slice, ``r`` resets its
brightness and contrast, Ctrl+S saves.

The page's skeleton, style and script are files of the package (``alr_monai/relabel/page/query.html``,
``query.css``, ``query.js``); this module fills the skeleton with the cards, the sheet's data and the pictures.

Rendering never raises for a bad image: :func:`render_picture` returns a :class:`Picture` whose ``problem`` says
why, and the page shows that reason in place of the image.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from alr_monai.data.classes import EXCLUDE
from alr_monai.data.text import text_key
from alr_monai.relabel.expert import QUERY_COLUMNS
from alr_monai.utils import atomic_write_text

__all__ = ["Picture", "View", "render_original", "render_picture", "slices_per_volume", "write_query_page"]


# The page's markup, style and script are package data (alr_monai/relabel/page/), read once per process.
PAGE_FILES = ("query.html", "query.css", "query.js")


@functools.cache
def page_file(name: str) -> str:
    """The text of one of the page's files (:data:`PAGE_FILES`), from the installed package."""
    if name not in PAGE_FILES:
        raise ValueError(f"{name!r} is not one of the query page's files {PAGE_FILES}")
    return resources.files("alr_monai.relabel").joinpath("page", name).read_text(encoding="utf-8")


# Display sizes (CSS pixels) of the longest side: small images are enlarged by a whole factor (nearest neighbour,
# so a 28x28 image stays sharp), large ones are fitted.
MAIN_SIZE = 256
VIEW_SIZE = 168  # each of a volume's three views
EXAMPLE_SIZE = 76
# Longest side stored in the page: keeps a page of a hundred CT slices a few megabytes, not hundreds.
MAX_STORED_SIDE = 512
# The original image (the file itself, not the network input): stored at its own resolution up to this longest side,
# shown up to ORIGINAL_DISPLAY CSS pixels (a click shows it 1:1); a volume keeps at most ORIGINAL_MAX_SLICES slices.
ORIGINAL_MAX_SIDE = 1024
ORIGINAL_DISPLAY = 512
ORIGINAL_MAX_SLICES = 64
# A page's volumes share this many stored slices (each keeps between 8 and ORIGINAL_MAX_SLICES): a round of 100
# queried CT volumes would otherwise hold 6400 slices of 512x512, hundreds of megabytes.
ORIGINAL_PAGE_SLICES = 1024


def slices_per_volume(queried: int) -> int:
    """The most slices each original volume keeps on a page of ``queried`` samples (see ORIGINAL_PAGE_SLICES)."""
    return max(8, min(ORIGINAL_MAX_SLICES, ORIGINAL_PAGE_SLICES // max(1, int(queried))))


# An original whose PNG is larger than this is stored as JPEG (quality JPEG_QUALITY) when that is smaller: a
# hundred 512x512 CT slices then cost a few megabytes, not tens (sizes measured in docs/notes of issue 26).
PNG_BUDGET = 96 * 1024
JPEG_QUALITY = 90


@dataclass(frozen=True)
class View:
    """One PNG of a picture (a 2D image, or one slice of a volume).

    Attributes:
        caption: what the view shows ("" for a 2D image, "axial" / "coronal" / "sagittal" for a volume).
        png: the encoded PNG.
        width: width in pixels.
        height: height in pixels.
    """

    caption: str
    png: bytes
    width: int
    height: int
    mime: str = "image/png"

    def data_uri(self) -> str:
        """The encoded image (PNG, or JPEG for a large original) as a ``data:`` URI."""
        return f"data:{self.mime};base64," + base64.b64encode(self.png).decode("ascii")


@dataclass(frozen=True)
class Picture:
    """An image made ready for the page, or the reason it could not be.

    Attributes:
        views: the PNG views (one for 2D, three for 3D); empty when ``problem`` is set.
        problem: why there is no image ("" when there is one).
        note: a remark shown under the image (e.g. which channel of a multi-channel image is shown).
    """

    views: tuple[View, ...] = ()
    problem: str = ""
    note: str = ""


def _as_array(image: Any) -> np.ndarray:
    if hasattr(image, "detach"):  # torch tensors (MONAI's MetaTensor too), without importing torch here
        image = image.detach().cpu().float().numpy()
    return np.asarray(image, dtype=np.float64)


def _to_uint8(array: np.ndarray, value_range: tuple[float, float] | None = None) -> tuple[np.ndarray, str]:
    """Min-max ``array`` to 0-255 over its finite values (or map ``value_range`` to 0-255, clipping); non-finite
    pixels become black."""
    finite = np.isfinite(array)
    if not finite.any():
        raise ValueError("no finite pixel value")
    if value_range is not None:
        low, high = float(value_range[0]), float(value_range[1])
        scaled = np.where(finite, (array - low) / (high - low), 0.0)
        return np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8), ""
    low, high = float(array[finite].min()), float(array[finite].max())
    if high <= low:
        return np.zeros(array.shape, dtype=np.uint8), f"constant image (every pixel {low:g})"
    scaled = np.where(finite, (array - low) / (high - low), 0.0)
    return np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8), ""


def _encode(plane: np.ndarray, caption: str, max_side: int, png_budget: int | None = None) -> View:
    """PNG of a (H, W) gray or (H, W, 3) RGB uint8 plane, shrunk (never enlarged) to ``max_side``; with
    ``png_budget``, a PNG larger than that many bytes is replaced by a JPEG when the JPEG is smaller."""
    from PIL import Image

    picture = Image.fromarray(np.ascontiguousarray(plane))
    if max(picture.size) > max_side:
        scale = max_side / max(picture.size)
        size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
        picture = picture.resize(size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    if png_budget is not None and buffer.tell() > png_budget:
        jpeg = io.BytesIO()
        picture.save(jpeg, format="JPEG", quality=JPEG_QUALITY)
        if jpeg.tell() < buffer.tell():
            return View(caption, jpeg.getvalue(), picture.width, picture.height, "image/jpeg")
    return View(caption, buffer.getvalue(), picture.width, picture.height)


def render_picture(image: Any, x_first: bool = False, max_side: int = MAX_STORED_SIDE) -> Picture:
    """Turn an image into page views; never raises.

    Args:
        image: a channel-first tensor or array: (C, H, W) or (H, W) for 2D, (C, D, H, W) for 3D; C = 3 is shown
            as RGB, any other C as its first channel. A :class:`Picture` is returned as is; a string or an
            exception becomes a picture whose ``problem`` is that text; None means "no image".
        x_first: the spatial axes are (x, y[, z]) as MONAI's file readers give them (first axis = columns), not
            (rows, columns): 2D images and slices are transposed to show upright.
        max_side: the longest side stored; larger images are shrunk (smoothly).

    Returns:
        The picture: one view for 2D, axial / coronal / sagittal mid-slices for 3D, each min-max scaled to 0-255
        over the whole image; or a picture with ``problem`` set.
    """
    if isinstance(image, Picture):
        return image
    if image is None:
        return Picture(problem="no image")
    if isinstance(image, str):
        return Picture(problem=image or "no image")
    if isinstance(image, BaseException):
        return Picture(problem=f"{type(image).__name__}: {image}")
    try:
        return _render(_as_array(image), x_first, max_side)
    except Exception as error:  # a bad image must cost its own picture, never the page
        return Picture(problem=f"cannot show this image: {type(error).__name__}: {error}")


def _render(array: np.ndarray, x_first: bool, max_side: int) -> Picture:
    shape = tuple(array.shape)
    if array.ndim == 2:
        array = array[None]
    if array.ndim == 4:
        # a volume with a singleton spatial axis is a 2D image (a one-frame DICOM read as a volume)
        spatial = [axis for axis in (1, 2, 3) if array.shape[axis] > 1]
        if len(spatial) <= 2:
            array = array.reshape(array.shape[0], *[array.shape[axis] for axis in spatial] or [1])
            if array.ndim == 2:
                array = array[:, :, None]
    if array.ndim not in (3, 4) or min(array.shape) < 1:
        raise ValueError(f"a tensor of shape {shape} is not a channel-first 2D or 3D image")
    channels = array.shape[0]
    note = ""
    if channels == 3:
        pixels = np.moveaxis(array, 0, -1)  # channel last for PIL
    else:
        pixels = array[0]
        if channels > 1:
            note = f"channel 1 of {channels} shown"
    pixels, constant = _to_uint8(pixels)
    note = "; ".join(text for text in (note, constant) if text)
    if array.ndim == 3:
        plane = np.swapaxes(pixels, 0, 1) if x_first else pixels
        return Picture((_encode(plane, "", max_side),), note=note)
    views = []
    for caption, axis in (("axial", 2 if x_first else 0), ("coronal", 1), ("sagittal", 0 if x_first else 2)):
        plane = np.take(pixels, pixels.shape[axis] // 2, axis=axis)
        if x_first:
            # (x, y) -> rows y, columns x; the slices through z get z as rows, the way a 2D frame shows
            plane = np.swapaxes(plane, 0, 1)
        views.append(_encode(plane, caption, max_side))
    return Picture(tuple(views), note=note)


def render_original(
    image: Any,
    scaled: bool = True,
    max_side: int = ORIGINAL_MAX_SIDE,
    max_slices: int = ORIGINAL_MAX_SLICES,
) -> Picture:
    """Turn an original image (the file at its own resolution, see
    :func:`alr_monai.data.transforms.original_image_transforms`) into page views; never raises.

    Args:
        image: a channel-first (C, x, y) image or (C, x, y, z) volume as MONAI's readers give it (first spatial
            axis = columns); C = 3 is shown as RGB, any other C as its first channel. A :class:`Picture` is returned
            as is; a string or an exception becomes a picture whose ``problem`` is that text.
        scaled: the values are the run's intensity scaling, in [0, 1] (the CT window already clips them): shown as
            they are, 0 black and 1 white. False min-max scales each image (the run's intensity ``none``).
        max_side: longest side stored; larger images are shrunk smoothly, and the note says so.
        max_slices: a volume keeps every k-th axial slice so that at most this many are stored; the note says so.

    Returns:
        One view for a 2D image, one view per kept axial slice (captioned ``slice i / n``) for a volume, with a note
        giving the original size and what was reduced; or a picture with ``problem`` set.
    """
    if isinstance(image, Picture):
        return image
    if image is None or isinstance(image, (str, BaseException)):
        return render_picture(image)
    try:
        return _render_original(_as_array(image), scaled, max_side, max(1, int(max_slices)))
    except Exception as error:  # a bad image must cost its own picture, never the page
        return Picture(problem=f"cannot show the original image: {type(error).__name__}: {error}")


def _render_original(array: np.ndarray, scaled: bool, max_side: int, max_slices: int) -> Picture:
    shape = tuple(array.shape)
    if array.ndim == 2:
        array = array[None]
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]  # a 2D DICOM or NIfTI read with a singleton third axis
    if array.ndim not in (3, 4) or min(array.shape) < 1:
        raise ValueError(f"a tensor of shape {shape} is not a channel-first 2D image or volume")
    channels = array.shape[0]
    notes = []
    if array.ndim == 3 and channels == 3:
        pixels = np.moveaxis(array, 0, -1)
    else:
        pixels = array[0]
        if channels > 1:
            notes.append(f"channel 1 of {channels} shown")
    pixels, constant = _to_uint8(pixels, (0.0, 1.0) if scaled else None)
    if constant:
        notes.append(constant)
    width, height = pixels.shape[0], pixels.shape[1]  # x first: columns, rows
    if max(width, height) > max_side:
        scale = max_side / max(width, height)
        notes.append(
            f"shown at {max(1, round(width * scale))}x{max(1, round(height * scale))} px, downscaled from "
            f"{width}x{height} (longest side capped at {max_side} px)"
        )
    else:
        notes.insert(0, f"{width}x{height} px, full resolution")
    if pixels.ndim == 2 or (pixels.ndim == 3 and array.ndim == 3):
        plane = np.swapaxes(pixels, 0, 1)  # (x, y[, rgb]) -> rows y, columns x
        return Picture((_encode(plane, "", max_side, PNG_BUDGET),), note="; ".join(notes))
    depth = pixels.shape[2]
    step = max(1, math.ceil(depth / max_slices))
    kept = list(range(0, depth, step))
    if step > 1:
        notes.append(f"1 in {step} of {depth} slices kept ({len(kept)} shown, at most {max_slices})")
    views = tuple(
        _encode(np.swapaxes(pixels[:, :, z], 0, 1), f"slice {z + 1} / {depth}", max_side, PNG_BUDGET) for z in kept
    )
    return Picture(views, note="; ".join(notes))


# ------------------------------------------------------------------------------------------------ the page
def _class_index(value: Any, class_names: Sequence[str]) -> int | None:
    """Index of a label given as a class index or a class name (any case); None if it is neither."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value) if 0 <= int(value) < len(class_names) else None
    text = text_key(str(value))
    for index, name in enumerate(class_names):
        if text_key(name) == text:
            return index
    return None


def _csv_cell(column: str, value: Any, class_names: Sequence[str]) -> str:
    """A row's value as the query CSV holds it (rows read back from that CSV are strings already)."""
    if value is None:
        return ""
    if column in ("given_label", "predicted_label") and isinstance(value, (int, np.integer)):
        return class_names[int(value)] if 0 <= int(value) < len(class_names) else str(value)
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _display_size(width: int, height: int, target: int) -> tuple[int, int, bool]:
    """CSS size showing a ``width`` x ``height`` image with its long side near ``target``; True when enlarged by a
    whole factor (drawn with nearest neighbour)."""
    longest = max(width, height, 1)
    if longest <= target:
        factor = max(1, target // longest)
        return width * factor, height * factor, factor > 1
    scale = target / longest
    return max(1, round(width * scale)), max(1, round(height * scale)), False


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _breakable(name: str) -> str:
    """A class name escaped for HTML, allowed to wrap after its underscores (immature_<wbr>granulocytes)."""
    return _e(name).replace("_", "_<wbr>")


def _json_for_script(obj: Any) -> str:
    """JSON that is safe inside a <script> element (no "</script>", no HTML comment openers)."""
    text = json.dumps(obj, ensure_ascii=False)
    for raw, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(raw, escaped)
    return text


class _PictureStore:
    """Pictures used more than once (the trusted examples) are stored once in the page and referenced by key."""

    def __init__(self) -> None:
        self.uris: dict[str, str] = {}
        self._keys: dict[View, str] = {}

    def key(self, view: View) -> str:
        if view not in self._keys:
            self._keys[view] = f"p{len(self._keys)}"
            self.uris[self._keys[view]] = view.data_uri()
        return self._keys[view]


def _picture_html(picture: Picture, target: int, view_target: int, store: _PictureStore | None, alt: str) -> str:
    """The figure of a picture: its views side by side, or a placeholder with the reason."""
    if picture.problem or not picture.views:
        reason = picture.problem or "no image"
        return (
            f'<div class="placeholder" style="width:{target}px;height:{target}px">'
            f"<span>Image not available</span><small>{_e(reason)}</small></div>"
        )
    parts = []
    size = target if len(picture.views) == 1 else view_target
    for view in picture.views:
        width, height, enlarged = _display_size(view.width, view.height, size)
        source = f'data-pic="{store.key(view)}" src=""' if store is not None else f'src="{view.data_uri()}"'
        title = (
            f"{alt} ({view.caption}, {view.width}x{view.height} px)"
            if view.caption
            else f"{alt} ({view.width}x{view.height} px)"
        )
        image = (
            f'<img {source} width="{width}" height="{height}" class="{"px" if enlarged else "smooth"}" '
            f'alt="{_e(alt)}" title="{_e(title)}">'
        )
        caption = f"<figcaption>{_e(view.caption)}</figcaption>" if view.caption else ""
        parts.append(f'<figure class="view">{image}{caption}</figure>')
    note = f'<div class="note">{_e(picture.note)}</div>' if picture.note else ""
    return f'<div class="views">{"".join(parts)}</div>{note}'


def _examples_html(
    label: int | None,
    role: str,
    class_names: Sequence[str],
    examples: Mapping[int, Sequence[Picture]],
    store: _PictureStore,
) -> str:
    name = class_names[label] if label is not None else "?"
    # a volume's example shows its first (axial) view only: three small views per example would crowd the row
    pictures = [Picture(p.views[:1], p.problem, p.note) for p in examples.get(label, ())] if label is not None else []
    if pictures:
        thumbs = "".join(
            f'<div class="thumb">{_picture_html(p, EXAMPLE_SIZE, EXAMPLE_SIZE, store, f"trusted example of {name}")}</div>'
            for p in pictures
        )
    else:
        thumbs = '<div class="none">no trusted example of this class</div>'
    return (
        f'<div class="exrow"><div class="exhead"><span class="role">{_e(role)}</span> '
        f'<span class="cls">{_e(name)}</span></div><div class="thumbs">{thumbs}</div></div>'
    )


def write_query_page(
    path: str | Path,
    rows: Sequence[Mapping[str, Any]],
    images: Sequence[Any],
    class_names: Sequence[str],
    examples: Mapping[int, Sequence[Any]] | None = None,
    columns: Sequence[str] = QUERY_COLUMNS,
    round_index: int | None = None,
    answer_command: str = "",
    title: str = "",
    originals: Sequence[Any] | None = None,
    score_help: str = "the acquisition score that ranked this sample; higher = more worth a look",
) -> Path:
    """Write a round's query sheet: one self-contained HTML file (atomically) the expert answers in a browser.

    Args:
        path: the page to write, conventionally ``relabel/queries/round_<k>.html``.
        rows: the query rows in the order the expert sees them, as the query CSV holds them (``id``,
            ``given_label`` and ``predicted_label`` as class names or indices, ``predicted_probability``, ``score``,
            ``image``, ``patient_id``); rows of one patient should be adjacent (a header marks each new patient).
        images: one per row: a channel-first tensor/array, a :class:`Picture`, or a string / exception saying why
            there is none (shown in place of the image).
        class_names: class names by index.
        examples: trusted examples by class index (a few per class), shown beside each sample for its given and
            its predicted class; same kinds of items as ``images``.
        columns: the query file's columns, in order; the saved CSV has exactly these (``expert_label`` and
            ``comment`` filled), plus ``reader`` when the expert types a reader name and it is not among them.
        round_index: the round, for the title and the saved file name ``round_<k>.csv`` (``answers.csv`` if None).
        answer_command: the command that applies the saved file, shown on the page (e.g.
            ``alr answer <file> --run_dir runs/x``).
        title: the page title (default: "Round <k> query sheet").
        originals: one per row, or None for none: the original image shown below the network input, at its own
            resolution with window/level controls (a volume with a slice slider): a :class:`Picture` from
            :func:`render_original` (a picture with only a ``note`` shows that one line, e.g. MedMNIST has no
            original file), an array (rendered by :func:`render_original`), a string / exception saying why there
            is none, or None for no original section on that card.
        score_help: what a card's "Query score" means (its tooltip), e.g.
            :func:`alr_monai.relabel.acquire.score_meaning` of the round's acquisition.

    Returns:
        The path written.

    Raises:
        ValueError: ``images`` and ``rows`` differ in length, or ``columns`` lacks ``id`` or ``expert_label``.
    """
    names = [str(name) for name in class_names]
    if len(images) != len(rows):
        raise ValueError(f"{len(images)} images for {len(rows)} query rows: one image (or reason) per row")
    if originals is not None and len(originals) != len(rows):
        raise ValueError(f"{len(originals)} original images for {len(rows)} query rows: one (or None) per row")
    columns = [str(column) for column in columns]
    for required in ("id", "expert_label"):
        if required not in columns:
            raise ValueError(f"the query columns {columns} lack {required!r}")
    examples = {int(k): [render_picture(item) for item in v] for k, v in (examples or {}).items()}
    filename = f"round_{round_index}.csv" if round_index is not None else "answers.csv"
    heading = title or (f"Round {round_index} query sheet" if round_index is not None else "Query sheet")
    store = _PictureStore()

    cards: list[str] = []
    previous_patient: str | None = None
    any_patient = any(str(row.get("patient_id") or "").strip() for row in rows)
    patient_sizes: dict[str, int] = {}
    for row in rows:
        patient = str(row.get("patient_id") or "").strip()
        patient_sizes[patient] = patient_sizes.get(patient, 0) + 1
    for position, (row, image) in enumerate(zip(rows, images, strict=True)):
        patient = str(row.get("patient_id") or "").strip()
        if any_patient and patient != previous_patient:
            if patient:
                count = patient_sizes[patient]
                cards.append(
                    f'<h2 class="patient">Patient <span class="pid">{_e(patient)}</span>'
                    f'<span class="count">{count} image{"s" if count != 1 else ""} in this round</span></h2>'
                )
            else:
                cards.append('<h2 class="patient nopatient">No patient id</h2>')
        previous_patient = patient
        original = originals[position] if originals is not None else None
        original_html = _original_html(render_original(original), store) if original is not None else ""
        cards.append(
            _card_html(position, row, render_picture(image), names, examples, store, original_html, score_help)
        )

    sheet = {
        "columns": columns,
        "rows": [[_csv_cell(column, row.get(column), names) for column in columns] for row in rows],
        "classes": names,
        "exclude": EXCLUDE,
        "filename": filename,
        "answerCommand": answer_command,
        # answers typed so far are kept in the browser under this key, so a closed tab loses nothing
        "storageKey": "alr-query-sheet:"
        + hashlib.sha256(json.dumps([heading, filename, [str(row.get("id")) for row in rows]]).encode()).hexdigest()[
            :16
        ],
    }
    legend = "".join(
        f"<li><kbd>{key}</kbd> {_e(text)}</li>"
        for key, text in (
            ("1</kbd>–<kbd>9", "pick the class with that number"),
            ("x", "exclude the image from training"),
            ("s", "skip (leave the label as it is, ask again later)"),
            ("u", "clear the answer"),
            ("c", "write a comment (Enter or Esc to leave it)"),
            ("[</kbd> <kbd>]", "previous / next slice of the original volume"),
            ("r", "reset the original image's brightness and contrast"),
            ("↓</kbd> <kbd>j", "next sample"),
            ("↑</kbd> <kbd>k", "previous sample"),
            ("Ctrl</kbd>+<kbd>S", "save the answers CSV"),
        )
    )
    apply_hint = (
        f"then apply it with <code>{_e(answer_command)}</code>"
        if answer_command
        else "then apply it with <code>alr answer &lt;downloaded file&gt; --run_dir &lt;run folder&gt;</code>"
    )
    document = page_file("query.html").format(
        title=_e(heading),
        heading=_e(heading),
        count=len(rows),
        plural="s" if len(rows) != 1 else "",
        filename=_e(filename),
        legend=legend,
        apply_hint=apply_hint,
        cards="\n".join(cards) if cards else '<p class="empty">Nothing to review in this round.</p>',
        css=page_file("query.css"),
        script=page_file("query.js"),
        sheet=_json_for_script(sheet),
        pictures=_json_for_script(store.uris),
    )
    return atomic_write_text(path, document, private=True)


def _card_html(
    position: int,
    row: Mapping[str, Any],
    picture: Picture,
    names: Sequence[str],
    examples: Mapping[int, Sequence[Picture]],
    store: _PictureStore,
    original_html: str = "",
    score_help: str = "",
) -> str:
    sample_id = str(row.get("id", ""))
    given = _class_index(row.get("given_label", ""), names)
    predicted = _class_index(row.get("predicted_label", ""), names)
    given_text = names[given] if given is not None else str(row.get("given_label", ""))
    predicted_text = names[predicted] if predicted is not None else str(row.get("predicted_label", ""))
    probability = _number(row.get("predicted_probability"))
    score = _number(row.get("score"))
    patient = str(row.get("patient_id") or "").strip()
    image_path = str(row.get("image") or "").strip()
    agree = given is not None and given == predicted

    facts = [
        ("Given label", f'<span class="tag given">{_e(given_text)}</span>'),
        (
            "Model predicts",
            f'<span class="tag {"same" if agree else "predicted"}">{_e(predicted_text)}</span>'
            + (f' <span class="prob">{probability:.0%}</span>' if probability is not None else ""),
        ),
    ]
    if patient:
        facts.append(("Patient", _e(patient)))
    if image_path:
        facts.append(("File", f'<span class="path" title="{_e(image_path)}">{_e(Path(image_path).name)}</span>'))
    if score is not None:  # four decimals, as the query CSV writes it: "2.0000" beside "2.0213", never "2" beside it
        facts.append(("Query score", f'<span class="score" title="{_e(score_help)}">{score:.4f}</span>'))
    facts_html = "".join(f"<dt>{label}</dt><dd>{value}</dd>" for label, value in facts)

    if agree:
        comparison = _examples_html(given, "given = predicted:", names, examples, store)
    else:
        comparison = _examples_html(given, "given:", names, examples, store)
        comparison += _examples_html(predicted, "predicted:", names, examples, store)

    choices = []
    for index, name in enumerate(names):
        key = f"<kbd>{index + 1}</kbd>" if index < 9 else '<kbd class="nokey"></kbd>'
        marks = []
        if index == given:
            marks.append('<span class="mark given">given</span>')
        if index == predicted:
            marks.append('<span class="mark predicted">model</span>')
        choices.append(
            f'<button type="button" class="choice" data-value="{_e(name)}">{key}<span class="name">{_breakable(name)}</span>'
            f"{''.join(marks)}</button>"
        )
    choices.append(
        f'<button type="button" class="choice exclude" data-value="{_e(EXCLUDE)}"><kbd>x</kbd>'
        '<span class="name">Exclude</span></button>'
    )
    choices.append(
        '<button type="button" class="choice skip" data-value=""><kbd>s</kbd><span class="name">Skip</span></button>'
    )
    return f"""<article class="sample" id="sample-{position}" data-row="{position}">
  <div class="imagecol">
    <div class="number">{position + 1}</div>
    {_picture_html(picture, MAIN_SIZE, VIEW_SIZE, None, f"sample {sample_id}")}
    <div class="sid" title="{_e(sample_id)}">{_e(sample_id)}</div>
  </div>
  <div class="infocol">
    <dl class="facts">{facts_html}</dl>
    <div class="exlabel">Trusted examples for comparison</div>
    <div class="examples">{comparison}</div>
  </div>
  <div class="answercol">
    <div class="status" aria-live="polite">Not answered</div>
    <div class="choices">{"".join(choices)}</div>
    <input type="text" class="comment" placeholder="Comment (optional) — press c" aria-label="comment for {_e(sample_id)}">
  </div>
  {original_html}
</article>"""


def _original_html(picture: Picture, store: _PictureStore) -> str:
    """The card's original-image row: the image at its resolution, window controls, a slice slider for a volume."""
    head = '<div class="orighead">Original image</div>'
    if not picture.views:
        if picture.problem:
            return f'<div class="origrow">{head}<div class="onote problem">not available: {_e(picture.problem)}</div></div>'
        return f'<div class="origrow onlynote">{head}<div class="onote">{_e(picture.note or "none")}</div></div>'
    keys = [store.key(view) for view in picture.views]
    middle = len(keys) // 2
    view = picture.views[middle]
    width, height, enlarged = _display_size(view.width, view.height, ORIGINAL_DISPLAY)
    note = picture.note
    if any(v.mime == "image/jpeg" for v in picture.views):
        note = "; ".join(text for text in (note, f"stored as JPEG quality {JPEG_QUALITY}") if text)
    slider = ""
    if len(keys) > 1:
        slider = (
            '<label class="slicebox">Slice <input type="range" class="slicer" min="0" '
            f'max="{len(keys) - 1}" value="{middle}" step="1" data-slices="{",".join(keys)}" '
            f'data-captions="{_e(json.dumps([v.caption for v in picture.views]))}" aria-label="slice"> '
            f'<span class="slicetext">{_e(view.caption)}</span></label>'
        )
    controls = (
        '<div class="wl"><label>Brightness <input type="range" class="bright" min="20" max="300" value="100" '
        'step="5" aria-label="brightness"></label>'
        '<label>Contrast <input type="range" class="contrast" min="20" max="500" value="100" step="5" '
        'aria-label="contrast"></label><div class="wlbuttons">'
        '<button type="button" class="wlpreset" data-bright="100" data-contrast="200" title="contrast x2">Narrow</button>'
        '<button type="button" class="wlpreset" data-bright="140" data-contrast="100" title="brighter">Bright</button>'
        '<button type="button" class="wlreset" title="r">Reset</button></div></div>'
    )
    image = (
        f'<img class="orig {"px" if enlarged else "smooth"}" data-pic="{keys[middle]}" src="" width="{width}" '
        f'height="{height}" data-width="{width}" data-height="{height}" alt="original image" '
        f'title="original image, {view.width}x{view.height} px (click: 1:1 / fit)">'
    )
    return (
        f'<div class="origrow">{head}<div class="origbody"><div class="origframe">{image}</div>'
        f'<div class="origside"><div class="onote">{_e(note)}</div>{slider}{controls}</div></div></div>'
    )
