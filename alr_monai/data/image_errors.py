"""Per-file image errors that name the file, say what is wrong and, where a package or a flag fixes it, which.

Every failure of the manifest image chain (:func:`alr_monai.data.transforms.build_image_transforms`) surfaces as
an :class:`ImageFileError`: the reader wraps decoder errors (pydicom, nibabel, PIL) and the shape and channel
checks raise it directly. ``kind`` sorts the failures for ``alr manifest check --decode``:

* ``missing decoder``: the file is fine but no installed package decodes its compression; ``fix`` names one;
* ``truncated``: the file ends before its pixel data does;
* ``multi-frame``: a multi-frame DICOM given to the 2D pipeline;
* ``4D``: a NIfTI with a 4th axis (time points, sequences) and no channel axis named;
* ``wrong shape``: a volume given to the 2D pipeline or an image to the 3D one;
* ``wrong channels``: a channel count the network's ``in_channels`` cannot take;
* ``broken series``: a DICOM series folder that is not one volume (a missing slice, several series, slices of
  different size, orientation or spacing);
* ``not an image``: a DICOM object without pixel data (RT plan, structured report) or a file that is not DICOM;
* ``undecodable``: anything else the decoder refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["ImageFileError", "KINDS", "classify_read_error", "find_image_error", "dicom_decoder_fix"]

KINDS: tuple[str, ...] = (
    "missing decoder",
    "truncated",
    "multi-frame",
    "4D",
    "wrong shape",
    "wrong channels",
    "broken series",
    "not an image",
    "undecodable",
)

_JPEG_LS = "pip install pylibjpeg pylibjpeg-libjpeg (or python-gdcm)"
_JPEG = "pip install pylibjpeg pylibjpeg-libjpeg (or python-gdcm); Pillow decodes only 8-bit JPEG"
_JPEG_2000 = "pip install pylibjpeg pylibjpeg-openjpeg (or Pillow built with OpenJPEG, or python-gdcm)"
_RLE = "pip install pylibjpeg pylibjpeg-rle (or python-gdcm)"

# Transfer syntax UID -> (name, what to install). Only compressed syntaxes need a decoder package.
_DICOM_DECODERS: dict[str, tuple[str, str]] = {
    "1.2.840.10008.1.2.4.50": ("JPEG Baseline", _JPEG),
    "1.2.840.10008.1.2.4.51": ("JPEG Extended (12-bit)", _JPEG),
    "1.2.840.10008.1.2.4.57": ("JPEG Lossless", _JPEG),
    "1.2.840.10008.1.2.4.70": ("JPEG Lossless SV1", _JPEG),
    "1.2.840.10008.1.2.4.80": ("JPEG-LS Lossless", _JPEG_LS),
    "1.2.840.10008.1.2.4.81": ("JPEG-LS Near-Lossless", _JPEG_LS),
    "1.2.840.10008.1.2.4.90": ("JPEG 2000 Lossless", _JPEG_2000),
    "1.2.840.10008.1.2.4.91": ("JPEG 2000", _JPEG_2000),
    "1.2.840.10008.1.2.4.92": ("JPEG 2000 Part 2 Lossless", _JPEG_2000),
    "1.2.840.10008.1.2.4.93": ("JPEG 2000 Part 2", _JPEG_2000),
    "1.2.840.10008.1.2.4.201": ("HTJ2K Lossless", _JPEG_2000),
    "1.2.840.10008.1.2.4.202": ("HTJ2K Lossless RPCL", _JPEG_2000),
    "1.2.840.10008.1.2.4.203": ("HTJ2K", _JPEG_2000),
    "1.2.840.10008.1.2.5": ("RLE Lossless", _RLE),
}

# Decoder messages (pydicom, nibabel, PIL, gzip) that mean "no installed plugin decodes this compression".
_MISSING_DECODER = re.compile(
    r"missing dependencies|all available plugins|no pixel data decoders|no available image handler|"
    r"does not support|is not supported|not installed",
    re.IGNORECASE,
)
# ... and those that mean "the file ends too early".
_TRUNCATED = re.compile(
    r"less than expected|expected \d+ bytes, got \d+|ended before the end-of-stream|image file is truncated|"
    r"truncated file|end of file|unexpected end|buffer is too small|requires a buffer of at least|"
    r"mmap length is greater|not enough (data|bytes)|premature end",
    re.IGNORECASE,
)


class ImageFileError(ValueError):
    """One image file the pipeline cannot use; the message names the file.

    The message is ``"<path>: <reason>"``, followed by ``"; fix: <fix>"`` when a package or a flag fixes it.

    Attributes:
        path: the image file.
        kind: one of :data:`KINDS`.
        reason: what is wrong, in words.
        fix: what to install or set, or None.
    """

    def __init__(self, path: str | Path, kind: str, reason: str, fix: str | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown image error kind {kind!r}; expected one of {KINDS}")
        self.path, self.kind, self.reason, self.fix = str(path), kind, reason, fix
        super().__init__(f"{self.path}: {reason}" + (f"; fix: {fix}" if fix else ""))

    def __reduce__(self) -> tuple[Any, ...]:
        # DataLoader workers and CacheDataset pools pickle exceptions; the default would lose the extra fields.
        return (type(self), (self.path, self.kind, self.reason, self.fix))


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def find_image_error(error: BaseException) -> ImageFileError | None:
    """The :class:`ImageFileError` inside ``error``'s cause chain (MONAI wraps transform errors), or None."""
    for inner in _chain(error):
        if isinstance(inner, ImageFileError):
            return inner
    return None


def dicom_decoder_fix(path: str | Path) -> tuple[str, str] | None:
    """(syntax name, what to install) for a DICOM file whose transfer syntax needs a decoder package, or None."""
    try:
        import pydicom

        meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
        uid = str(meta.get("TransferSyntaxUID", "") or "")
    except Exception:  # the header itself is unreadable: the caller reports the original error
        return None
    return _DICOM_DECODERS.get(uid)


def _text(error: BaseException) -> str:
    return " ".join(str(inner) for inner in _chain(error))


def classify_read_error(path: str | Path, error: BaseException, dicom: bool = False) -> ImageFileError:
    """Turns a decoder's exception for ``path`` into an :class:`ImageFileError` with a kind and a fix.

    Args:
        path: the file being read.
        error: what the decoder raised.
        dicom: the file is DICOM (its transfer syntax then names the decoder to install).

    Returns:
        The error to raise (``from error``).
    """
    found = find_image_error(error)
    if found is not None:
        return found
    text = _text(error)
    first = f"{type(error).__name__}: {' '.join(str(error).split())}"
    if dicom and _MISSING_DECODER.search(text):
        syntax = dicom_decoder_fix(path)
        if syntax is not None:
            name, fix = syntax
            return ImageFileError(path, "missing decoder", f"no installed decoder for {name} pixel data ({first})", fix)
    if dicom and any(type(inner).__name__ == "InvalidDicomError" for inner in _chain(error)):
        return ImageFileError(
            path,
            "not an image",
            f"not a DICOM file ({first})",
            "replace it with the DICOM file from the PACS, or remove the row (or pass --drop_bad_images true)",
        )
    if isinstance(error, EOFError) or _TRUNCATED.search(text):
        return ImageFileError(path, "truncated", f"file is truncated: {first}", "copy the file again from its source")
    return ImageFileError(path, "undecodable", f"cannot decode: {first}")
