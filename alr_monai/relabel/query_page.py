"""The query sheet: one self-contained HTML page per round, where the expert sees and answers the queried images.

``relabel/queries/round_<k>.html`` sits beside the round's query CSV. It holds everything inline (images as PNG
data URIs, CSS, JavaScript), so it opens from the file system with no server and no network. Per queried sample
it shows the image (a 2D image as it is, a 3D volume as three mid-slices), the given label, the model's
prediction and probability, the patient, and a few trusted examples of the given and of the predicted class.
The expert picks a class, "exclude" or "skip", may add a comment, and saves an answers CSV: the query file's own
columns with ``expert_label`` and ``comment`` filled, which ``alr answer`` takes as it is.

Keys: 1-9 pick the class shown with that digit, ``x`` excludes, ``s`` skips, ``u`` clears, ``c`` writes a comment,
arrows or ``j``/``k`` move between samples, Ctrl+S saves.

Rendering never raises for a bad image: :func:`render_picture` returns a :class:`Picture` whose ``problem`` says
why, and the page shows that reason in place of the image.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from alr_monai.data.classes import EXCLUDE
from alr_monai.relabel.expert import QUERY_COLUMNS
from alr_monai.utils import atomic_write_text

__all__ = ["Picture", "View", "render_picture", "write_query_page"]

# Display sizes (CSS pixels) of the longest side: small images are enlarged by a whole factor (nearest neighbour,
# so a 28x28 image stays sharp), large ones are fitted.
MAIN_SIZE = 256
VIEW_SIZE = 168  # each of a volume's three views
EXAMPLE_SIZE = 76
# Longest side stored in the page: keeps a page of a hundred CT slices a few megabytes, not hundreds.
MAX_STORED_SIDE = 512


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

    def data_uri(self) -> str:
        """The PNG as a ``data:`` URI."""
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


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


def _to_uint8(array: np.ndarray) -> tuple[np.ndarray, str]:
    """Min-max ``array`` to 0-255 over its finite values; non-finite pixels become black."""
    finite = np.isfinite(array)
    if not finite.any():
        raise ValueError("no finite pixel value")
    low, high = float(array[finite].min()), float(array[finite].max())
    if high <= low:
        return np.zeros(array.shape, dtype=np.uint8), f"constant image (every pixel {low:g})"
    scaled = np.where(finite, (array - low) / (high - low), 0.0)
    return np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8), ""


def _encode(plane: np.ndarray, caption: str, max_side: int) -> View:
    """PNG of a (H, W) gray or (H, W, 3) RGB uint8 plane, shrunk (never enlarged) to ``max_side``."""
    from PIL import Image

    picture = Image.fromarray(np.ascontiguousarray(plane))
    if max(picture.size) > max_side:
        scale = max_side / max(picture.size)
        size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
        picture = picture.resize(size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
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


# ------------------------------------------------------------------------------------------------ the page
def _class_index(value: Any, class_names: Sequence[str]) -> int | None:
    """Index of a label given as a class index or a class name (any case); None if it is neither."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value) if 0 <= int(value) < len(class_names) else None
    text = str(value).strip().lower()
    for index, name in enumerate(class_names):
        if name.strip().lower() == text:
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

    Returns:
        The path written.

    Raises:
        ValueError: ``images`` and ``rows`` differ in length, or ``columns`` lacks ``id`` or ``expert_label``.
    """
    names = [str(name) for name in class_names]
    if len(images) != len(rows):
        raise ValueError(f"{len(images)} images for {len(rows)} query rows: one image (or reason) per row")
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
        cards.append(_card_html(position, row, render_picture(image), names, examples, store))

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
    document = _TEMPLATE.format(
        title=_e(heading),
        heading=_e(heading),
        count=len(rows),
        plural="s" if len(rows) != 1 else "",
        filename=_e(filename),
        legend=legend,
        apply_hint=apply_hint,
        cards="\n".join(cards) if cards else '<p class="empty">Nothing to review in this round.</p>',
        css=_CSS,
        script=_SCRIPT,
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
    if score is not None:
        facts.append(("Query score", f'<span title="the acquisition score that ranked this sample">{score:.3g}</span>'))
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
</article>"""


_CSS = """
:root { --accent: #1f6feb; --ink: #1d232b; --muted: #5d6875; --line: #d9dee4; --bg: #f3f5f7;
  --confirm: #1a7f37; --change: #b35900; --exclude: #c62828; --skip: #6e7781; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  color: var(--ink); background: var(--bg); }
header.bar { position: sticky; top: 0; z-index: 10; display: flex; align-items: center; gap: 18px; flex-wrap: wrap;
  padding: 10px 24px; background: #fff; border-bottom: 1px solid var(--line); box-shadow: 0 1px 4px rgba(0,0,0,.06); }
header.bar h1 { font-size: 19px; margin: 0; font-weight: 650; }
header.bar .sub { color: var(--muted); font-size: 13px; }
.progress { display: flex; flex-direction: column; gap: 4px; min-width: 220px; font-size: 13px; color: var(--muted); }
.progress .meter { height: 6px; background: #e6e9ed; border-radius: 3px; overflow: hidden; }
.progress .meter div { height: 100%; width: 0; background: var(--accent); transition: width .2s; }
.counts b { color: var(--ink); }
.spacer { flex: 1; }
label.reader { font-size: 13px; color: var(--muted); }
label.reader input { width: 130px; margin-left: 6px; }
button.save { font: inherit; font-weight: 600; padding: 8px 16px; border-radius: 6px; border: 1px solid #1a5fd0;
  background: var(--accent); color: #fff; cursor: pointer; }
button.save:hover { background: #1a5fd0; }
#saved { font-size: 13px; color: var(--confirm); max-width: 420px; }
#saved code { color: var(--ink); }
details.help { margin: 14px 24px 0; background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 8px 16px; }
details.help summary { cursor: pointer; font-weight: 600; }
details.help ul { columns: 2; margin: 8px 0; padding-left: 18px; }
details.help p { margin: 6px 0; color: var(--muted); }
kbd { display: inline-block; min-width: 1.5em; padding: 0 4px; border: 1px solid #b8c0c8; border-bottom-width: 2px;
  border-radius: 4px; background: #f6f8fa; font: 12px/1.5 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  text-align: center; color: var(--ink); }
kbd.nokey { visibility: hidden; }
main { padding: 8px 24px 80px; }
h2.patient { margin: 26px 0 8px; font-size: 16px; font-weight: 650; display: flex; align-items: baseline; gap: 10px;
  border-bottom: 2px solid var(--line); padding-bottom: 4px; }
h2.patient .pid { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
h2.patient .count { font-size: 13px; font-weight: 400; color: var(--muted); }
h2.nopatient { color: var(--muted); }
article.sample { display: grid; grid-template-columns: auto minmax(260px, 1fr) 400px; gap: 20px; margin: 12px 0;
  padding: 16px; background: #fff; border: 1px solid var(--line); border-left: 6px solid var(--line);
  border-radius: 8px; scroll-margin-top: 90px; }
article.sample.current { border-color: var(--accent); box-shadow: 0 0 0 2px var(--accent), 0 4px 14px rgba(31,111,235,.18); }
article.sample.answered-confirm { border-left-color: var(--confirm); }
article.sample.answered-change { border-left-color: var(--change); }
article.sample.answered-exclude { border-left-color: var(--exclude); }
article.sample.answered-skip { border-left-color: var(--skip); }
.imagecol { position: relative; }
.number { position: absolute; top: -8px; left: -8px; z-index: 1; background: var(--ink); color: #fff; font-size: 12px;
  font-weight: 600; padding: 1px 7px; border-radius: 10px; }
.views { display: flex; gap: 6px; background: #000; padding: 6px; border-radius: 6px; width: max-content; }
figure.view { margin: 0; display: flex; flex-direction: column; align-items: center; }
figure.view figcaption { color: #c9d1d9; font-size: 12px; margin-top: 2px; }
img.px { image-rendering: crisp-edges; image-rendering: pixelated; }
img { display: block; }
.note { font-size: 12px; color: var(--muted); margin-top: 4px; max-width: 300px; }
.sid { font: 12px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; color: var(--muted); margin-top: 6px;
  max-width: 280px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.placeholder { display: flex; flex-direction: column; align-items: center; justify-content: center; gap: 6px;
  padding: 10px; text-align: center; background: #fbeaea; border: 1px dashed var(--exclude); border-radius: 6px;
  color: var(--exclude); overflow: hidden; }
.placeholder span { font-weight: 600; font-size: 13px; }
.placeholder small { font-size: 11px; color: #7a2b2b; word-break: break-word; }
.thumb .placeholder { font-size: 10px; }
.thumb .placeholder span { font-size: 10px; }
.thumb .placeholder small { display: none; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 4px 14px; margin: 0 0 12px; }
dl.facts dt { color: var(--muted); font-size: 13px; }
dl.facts dd { margin: 0; }
.tag { display: inline-block; padding: 0 8px; border-radius: 4px; font-weight: 600; }
.tag.given { background: #eef1f4; border: 1px solid #c9d1d9; }
.tag.predicted { background: #fff4e5; border: 1px solid #f0b46b; color: #7a3e00; }
.tag.same { background: #e8f5ec; border: 1px solid #9fd3ad; color: #155d2b; }
.prob { color: var(--muted); font-variant-numeric: tabular-nums; }
.path { font: 12px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.examples { display: flex; flex-wrap: wrap; gap: 8px 20px; }
.exlabel { font-size: 12px; font-weight: 600; color: var(--muted); text-transform: uppercase;
  letter-spacing: .04em; margin-bottom: 4px; }
.exrow { margin-bottom: 4px; max-width: 270px; }
.exhead { font-size: 12px; color: var(--muted); margin-bottom: 3px; }
.exhead .cls { color: var(--ink); font-weight: 600; }
.thumbs { display: flex; gap: 6px; flex-wrap: wrap; }
.thumb .views { padding: 3px; }
.none { font-size: 12px; color: var(--muted); font-style: italic; }
.answercol { display: flex; flex-direction: column; gap: 8px; }
.status { font-size: 13px; font-weight: 600; color: var(--muted); }
.status.confirm { color: var(--confirm); } .status.change { color: var(--change); }
.status.exclude { color: var(--exclude); } .status.skip { color: var(--skip); }
.choices { display: grid; grid-template-columns: 1fr 1fr; gap: 6px; }
button.choice { display: flex; align-items: center; gap: 6px; font: inherit; font-size: 14px; text-align: left;
  padding: 5px 8px; background: #fff; border: 1px solid var(--line); border-radius: 6px; cursor: pointer; min-width: 0; }
button.choice .name { flex: 1; overflow-wrap: anywhere; }
button.choice:hover { border-color: #8c959f; background: #f6f8fa; }
.mark { font-size: 10px; text-transform: uppercase; letter-spacing: .03em; padding: 0 4px; border-radius: 3px; }
.mark.given { background: #eef1f4; color: var(--muted); }
.mark.predicted { background: #fff4e5; color: #7a3e00; }
button.choice.exclude { color: var(--exclude); }
button.choice.skip { color: var(--skip); }
button.choice.selected { background: var(--accent); border-color: var(--accent); color: #fff; }
button.choice.selected kbd { background: rgba(255,255,255,.2); border-color: rgba(255,255,255,.5); color: #fff; }
button.choice.selected .mark { background: rgba(255,255,255,.25); color: #fff; }
button.choice.exclude.selected { background: var(--exclude); border-color: var(--exclude); }
button.choice.skip.selected { background: var(--skip); border-color: var(--skip); }
input.comment { font: inherit; font-size: 14px; padding: 6px 8px; border: 1px solid var(--line); border-radius: 6px; }
input.comment:focus { outline: 2px solid var(--accent); border-color: var(--accent); }
.empty { color: var(--muted); }
@media (max-width: 1100px) { article.sample { grid-template-columns: auto 1fr; } .answercol { grid-column: 1 / -1; } }
"""

_SCRIPT = r"""
(function () {
  "use strict";
  var sheet = JSON.parse(document.getElementById("sheet-data").textContent);
  var pictures = JSON.parse(document.getElementById("pictures").textContent);
  document.querySelectorAll("img[data-pic]").forEach(function (img) { img.src = pictures[img.dataset.pic] || ""; });

  var cards = Array.prototype.slice.call(document.querySelectorAll("article.sample"));
  var labelCol = sheet.columns.indexOf("expert_label");
  var commentCol = sheet.columns.indexOf("comment");
  var givenCol = sheet.columns.indexOf("given_label");
  // answers[i]: null = not answered yet, "" = skip, sheet.exclude, or a class name
  var answers = sheet.rows.map(function () { return null; });
  var comments = sheet.rows.map(function () { return ""; });
  var current = -1;

  function store() {
    try {
      localStorage.setItem(sheet.storageKey, JSON.stringify({ answers: answers, comments: comments,
        reader: document.getElementById("reader").value }));
    } catch (e) { /* storage may be off for file:// pages; the page works without it */ }
  }
  function restore() {
    try {
      var saved = JSON.parse(localStorage.getItem(sheet.storageKey) || "null");
      if (!saved || saved.answers.length !== answers.length) { return 0; }
      answers = saved.answers; comments = saved.comments;
      document.getElementById("reader").value = saved.reader || "";
      return answers.filter(function (a) { return a !== null; }).length;
    } catch (e) { return 0; }
  }

  function kind(i) {
    var value = answers[i];
    if (value === null) { return "open"; }
    if (value === "") { return "skip"; }
    if (value === sheet.exclude) { return "exclude"; }
    var given = givenCol >= 0 ? sheet.rows[i][givenCol].trim().toLowerCase() : "";
    return value.toLowerCase() === given ? "confirm" : "change";
  }

  function render(i) {
    var card = cards[i], value = answers[i], k = kind(i);
    card.querySelectorAll("button.choice").forEach(function (button) {
      button.classList.toggle("selected", value !== null && button.dataset.value === value);
    });
    ["confirm", "change", "exclude", "skip"].forEach(function (name) {
      card.classList.toggle("answered-" + name, k === name);
    });
    var status = card.querySelector(".status");
    status.className = "status " + k;
    status.textContent = { open: "Not answered", skip: "Skipped: stays in the pool",
      exclude: "Excluded from training", confirm: "Confirmed: " + value,
      change: "Relabel: " + (givenCol >= 0 ? sheet.rows[i][givenCol] : "?") + " \u2192 " + value }[k];
    card.querySelector("input.comment").value = comments[i];
  }

  function summary() {
    var counts = { open: 0, skip: 0, exclude: 0, confirm: 0, change: 0 };
    answers.forEach(function (_, i) { counts[kind(i)] += 1; });
    var done = answers.length - counts.open;
    document.getElementById("done").textContent = done;
    document.getElementById("relabelled").textContent = counts.change;
    document.getElementById("confirmed").textContent = counts.confirm;
    document.getElementById("excluded").textContent = counts.exclude;
    document.getElementById("skipped").textContent = counts.skip;
    document.getElementById("meter").style.width = (answers.length ? 100 * done / answers.length : 0) + "%";
  }

  function select(i, scroll) {
    if (i < 0 || i >= cards.length) { return; }
    if (current >= 0) { cards[current].classList.remove("current"); }
    current = i;
    cards[i].classList.add("current");
    if (scroll) { cards[i].scrollIntoView({ block: "center" }); }
  }

  function answer(i, value, advance) {
    answers[i] = value;
    render(i); summary(); store();
    document.getElementById("saved").textContent = "";
    if (advance && i + 1 < cards.length) { select(i + 1, true); }
  }

  function csvCell(value) {
    value = String(value);
    return /[",\r\n]|^\s|\s$/.test(value) ? '"' + value.replace(/"/g, '""') + '"' : value;
  }

  function buildCsv() {
    var columns = sheet.columns.slice();
    var reader = document.getElementById("reader").value.trim();
    var readerCol = columns.indexOf("reader");
    if (reader && readerCol < 0) { columns.push("reader"); readerCol = columns.length - 1; }
    var lines = [columns.map(csvCell).join(",")];
    sheet.rows.forEach(function (row, i) {
      var cells = row.slice();
      while (cells.length < columns.length) { cells.push(""); }
      cells[labelCol] = answers[i] === null ? "" : answers[i];
      if (commentCol >= 0) { cells[commentCol] = comments[i].replace(/[\r\n]+/g, " ").trim(); }
      if (reader && readerCol >= 0) { cells[readerCol] = reader; }
      lines.push(cells.map(csvCell).join(","));
    });
    return lines.join("\n") + "\n";
  }

  function save() {
    var blob = new Blob([buildCsv()], { type: "text/csv;charset=utf-8" });
    var url = URL.createObjectURL(blob);
    var link = document.createElement("a");
    link.href = url; link.download = sheet.filename; link.style.display = "none";
    document.body.appendChild(link); link.click(); link.remove();
    setTimeout(function () { URL.revokeObjectURL(url); }, 10000);
    var labelled = answers.filter(function (a) { return a !== null && a !== ""; }).length;
    var message = document.getElementById("saved");
    message.textContent = "Saved " + sheet.filename + " (" + labelled + " of " + answers.length +
      " answered) to your downloads folder. ";
    if (!labelled) { message.textContent += "It answers nothing: alr answer refuses it unless given --allow_empty. "; }
    var code = document.createElement("code");
    code.textContent = sheet.answerCommand || ("alr answer " + sheet.filename + " --run_dir <run folder>");
    message.appendChild(document.createTextNode("Apply it with: "));
    message.appendChild(code);
  }

  cards.forEach(function (card, i) {
    card.addEventListener("click", function () { select(i, false); });
    card.querySelectorAll("button.choice").forEach(function (button) {
      button.addEventListener("click", function (event) {
        event.stopPropagation(); select(i, false); answer(i, button.dataset.value, false); button.blur();
      });
    });
    var input = card.querySelector("input.comment");
    input.addEventListener("focus", function () { select(i, false); });
    input.addEventListener("input", function () { comments[i] = input.value; store(); });
    input.addEventListener("keydown", function (event) {
      if (event.key === "Enter" || event.key === "Escape") { event.preventDefault(); input.blur(); }
    });
  });
  document.getElementById("save").addEventListener("click", save);
  document.getElementById("reader").addEventListener("input", store);

  document.addEventListener("keydown", function (event) {
    if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "s") { event.preventDefault(); save(); return; }
    if (event.ctrlKey || event.metaKey || event.altKey) { return; }
    var target = event.target;
    if (target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA" || target.tagName === "SELECT")) { return; }
    if (!cards.length) { return; }
    if (current < 0) { select(0, true); }
    var key = event.key, handled = true;
    if (/^[1-9]$/.test(key)) {
      var index = Number(key) - 1;
      if (index < sheet.classes.length) { answer(current, sheet.classes[index], true); }
    } else if (key === "x" || key === "X") { answer(current, sheet.exclude, true);
    } else if (key === "s" || key === "S") { answer(current, "", true);
    } else if (key === "u" || key === "U") { answer(current, null, false);
    } else if (key === "c" || key === "C") { cards[current].querySelector("input.comment").focus();
    } else if (key === "ArrowDown" || key === "ArrowRight" || key === "j") { select(Math.min(current + 1, cards.length - 1), true);
    } else if (key === "ArrowUp" || key === "ArrowLeft" || key === "k") { select(Math.max(current - 1, 0), true);
    } else { handled = false; }
    if (handled) { event.preventDefault(); }
  });

  var restored = restore();
  cards.forEach(function (_, i) { render(i); });
  summary();
  if (restored) {
    document.getElementById("saved").textContent = restored + " answers restored from this browser (not saved to a file yet).";
  }
  if (cards.length) { select(0, false); }
})();
"""

_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
<header class="bar">
  <div><h1>{heading}</h1><div class="sub">{count} sample{plural} to review</div></div>
  <div class="progress">
    <div class="counts"><b id="done">0</b> / {count} answered · <b id="relabelled">0</b> relabelled ·
      <b id="confirmed">0</b> confirmed · <b id="excluded">0</b> excluded · <b id="skipped">0</b> skipped</div>
    <div class="meter"><div id="meter"></div></div>
  </div>
  <div class="spacer"></div>
  <div id="saved" aria-live="polite"></div>
  <label class="reader">Reader <input id="reader" type="text" placeholder="optional"></label>
  <button type="button" class="save" id="save" title="Ctrl+S">Save answers CSV</button>
</header>
<details class="help" open>
  <summary>How to answer</summary>
  <p>For each image choose the correct class, <b>Exclude</b> (the image is unusable: it leaves training) or
  <b>Skip</b> (no answer: the label stays as given and it may be asked again). Compare with the trusted examples
  on the right. Answers are kept in this browser while you work. When done, press <b>Save answers CSV</b>: it
  downloads <code>{filename}</code>; {apply_hint}.</p>
  <ul>{legend}</ul>
</details>
<main>
{cards}
</main>
<script type="application/json" id="sheet-data">{sheet}</script>
<script type="application/json" id="pictures">{pictures}</script>
<script>{script}</script>
</body>
</html>
"""
