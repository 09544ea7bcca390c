"""Image loading and preprocessing as MONAI dictionary transforms.

Two chains are built here, both producing ``{"image": float32 tensor (C, *spatial), "label": int, "index": int,
"id": str}`` items that batch with ``monai.data.DataLoader``:

* :func:`build_image_transforms` loads files named in a manifest (DICOM, NIfTI, PNG/JPEG, mixed freely);
* :func:`build_array_transforms` takes in-memory ``uint8`` arrays (MedMNIST).

Reader choice: MONAI's automatic reader selection works for all three formats only by accident of registration
order. ``PydicomReader.verify_suffix`` accepts every file, so setting ``MONAI_DICOM_READER=pydicom`` (or installing
ITK, whose reader also accepts everything) changes which library decodes a PNG or a DICOM. :class:`MedicalImageReader`
pins the choice by file extension instead, so the same manifest loads the same way on every machine.

Spatial axes follow MONAI's reader convention: the first spatial axis is x (image columns), for all three formats
(``PILReader`` and ``PydicomReader`` transpose to match NIfTI), so a PNG and a DICOM of the same picture agree.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import ImageReader, NibabelReader, PILReader, PydicomReader
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    Orientationd,
    RandFlipd,
    RandomizableTransform,
    RandRotate90d,
    Resized,
    ScaleIntensityd,
    ScaleIntensityRanged,
    Spacingd,
)
from monai.utils import MetaKeys, ensure_tuple

from alr_monai.data.dicom import invert_monochrome1, is_series_ref, no_pixel_data_error, quiet_pydicom, read_series
from alr_monai.data.image_errors import ImageFileError, classify_read_error
from alr_monai.data.manifest import ImageKind, image_kind

__all__ = [
    "CHANNELS_META_KEY",
    "FRAMES_META_KEY",
    "MedicalImageReader",
    "SqueezeToSpatialDimsd",
    "ForceChannelsd",
    "ArrayToTensord",
    "EnsureIntd",
    "build_image_transforms",
    "build_array_transforms",
    "intensity_transform",
    "original_image_transforms",
]

# PIL modes whose raw arrays are not intensities (palette indices, CMYK ink, ...) and need converting first.
_PIL_MODES_TO_RGB = {"P": "RGBA", "PA": "RGBA", "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB"}


def _pil_to_intensity_mode(image: Any) -> Any:
    """PILReader converter: turn palette/CMYK/... images into RGB(A) so pixel values are intensities."""
    target = _PIL_MODES_TO_RGB.get(image.mode)
    return image.convert(target) if target is not None else image


@dataclass
class _Series:
    """A DICOM series read as one volume by :func:`alr_monai.data.dicom.read_series`."""

    array: np.ndarray
    meta: dict


@dataclass
class _ReadImage:
    """What :meth:`MedicalImageReader.read` returns: the native image object, which reader made it, the files, and
    the error reading them raised (raised by ``get_data``, so ``LoadImage`` cannot hide it behind other readers)."""

    kind: ImageKind
    native: Any
    filenames: tuple[str, ...] = ()
    error: BaseException | None = None


# Where the channels of a loaded image came from, kept in its metadata: only a known alpha channel may be dropped and
# only known colour may be averaged to gray; NIfTI sequences or DICOM samples must match in_channels exactly.
CHANNELS_META_KEY = "alr_channels"
FRAMES_META_KEY = "alr_frames"
_PIL_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")
_DICOM_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT", "YBR_PARTIAL_420")


class MedicalImageReader(ImageReader):
    """Reads DICOM, NIfTI and PNG/JPEG files, choosing the MONAI reader by file extension.

    ``.dcm`` goes to ``PydicomReader`` (rescale slope/intercept applied, so CT comes out in HU), ``.nii``/``.nii.gz``
    to ``NibabelReader`` and ``.png``/``.jpg``/``.jpeg`` to ``PILReader`` (palette images converted to RGB(A)).
    Unlike ``LoadImage``'s automatic choice, the result does not depend on ``MONAI_DICOM_READER`` or on whether
    ITK is installed.

    Every decoder error is raised as :class:`~alr_monai.data.image_errors.ImageFileError` naming the file (and, for
    a DICOM compression no installed package decodes, the package to install). Channels are made explicit:

    * a colour DICOM (``SamplesPerPixel`` 3) gets its samples as channels (MONAI's reader would read them as a
      third spatial axis), a multi-frame DICOM comes out as ``(columns, rows, frames)``, a volume;
    * a NIfTI with a 4th axis (time points, sequences) is refused unless ``channel_axis`` names the axis that holds
      channels; it is never read as "gray + alpha".

    Args:
        channel_axis: for NIfTI files with more than 3 axes, the axis of the file's array (x, y, z, 4th) that holds
            channels, e.g. 3 or -1 for a 4D file whose volumes are MR sequences. None refuses such files.
    """

    def __init__(self, channel_axis: int | None = None) -> None:
        super().__init__()
        self.channel_axis = channel_axis
        self._readers: dict[ImageKind, ImageReader] = {
            "dicom": PydicomReader(),
            "nifti": NibabelReader(),
            "pil": PILReader(converter=_pil_to_intensity_mode),
        }

    def _kind(self, filenames: Sequence[Any]) -> ImageKind | None:
        kinds = {image_kind(str(f)) for f in filenames}
        return kinds.pop() if len(kinds) == 1 else None

    def verify_suffix(self, filename: Sequence[Any] | Any) -> bool:
        """Returns True when every file has a supported extension, all of the same kind."""
        return self._kind(ensure_tuple(filename)) is not None

    def read(self, data: Sequence[Any] | Any, **kwargs: Any) -> _ReadImage:
        """Reads one file (or several of the same kind, stacked as channels) with the matching MONAI reader.

        A DICOM series reference (a folder of slice files, or ``FOLDER#SERIES_UID``) is read as one volume by
        :func:`alr_monai.data.dicom.read_series`; a DICOM object without pixel data is refused by name.
        """
        filenames = tuple(str(f) for f in ensure_tuple(data))
        kind = self._kind(filenames)
        if kind is None:
            raise ValueError(f"unsupported or mixed image file types: {list(filenames)}")
        if kind == "dicom" and len(filenames) == 1 and is_series_ref(filenames[0]):
            try:
                return _ReadImage(kind, _Series(*read_series(filenames[0])), filenames)
            except Exception as error:  # raised by get_data, as below
                return _ReadImage(kind, None, filenames, classify_read_error(filenames[0], error, True))
        try:
            with quiet_pydicom():
                native = self._readers[kind].read(data, **kwargs)
            if kind == "dicom":
                datasets = native if isinstance(native, (list, tuple)) else [native]
                for name, dataset in zip(filenames, datasets, strict=False):
                    if "PixelData" not in dataset and "FloatPixelData" not in dataset:
                        raise no_pixel_data_error(name, dataset)
        except Exception as error:  # raised later by get_data: LoadImage would try its other readers and hide it
            return _ReadImage(kind, None, filenames, self._file_error(kind, filenames, error, **kwargs))
        return _ReadImage(kind, native, filenames)

    def _file_error(self, kind: ImageKind, filenames: tuple[str, ...], error: BaseException, **kwargs: Any) -> Any:
        """The error naming the file that failed; for a row of several files (sequences), each is tried alone."""
        if len(filenames) == 1:
            return classify_read_error(filenames[0], error, kind == "dicom")
        reader = self._readers[kind]
        for name in filenames:
            try:
                reader.get_data(reader.read(name, **kwargs))
            except Exception as alone:  # this file fails on its own: it is the one to name
                return classify_read_error(name, alone, kind == "dicom")
        return ImageFileError(
            filenames[0],
            "wrong shape",
            f"the row's sequence files {list(filenames)} cannot be stacked as channels "
            f"({type(error).__name__}: {' '.join(str(error).split())})",
            "every sequence of a row must have the same shape",
        )

    def get_data(self, img: _ReadImage) -> tuple[np.ndarray, dict]:
        """Returns the array and metadata from the reader that read ``img``.

        Raises:
            ImageFileError: the file cannot be decoded, or is a NIfTI with a 4th axis and no ``channel_axis``.
        """
        path = img.filenames[0] if img.filenames else "<image>"
        if img.error is not None:
            raise img.error
        if isinstance(img.native, _Series):
            meta = dict(img.native.meta)
            meta[CHANNELS_META_KEY] = "single"
            meta[FRAMES_META_KEY] = 1
            return img.native.array, meta
        try:
            with quiet_pydicom():  # a failing decoder plugin logs a traceback; the error below names the file once
                array, meta = self._readers[img.kind].get_data(img.native)
        except Exception as error:  # pixel data is decoded here, not in read()
            raise self._file_error(img.kind, img.filenames, error) from error
        array = np.asarray(array)
        meta[CHANNELS_META_KEY] = "single"
        meta[FRAMES_META_KEY] = 1
        if len(img.filenames) > 1:
            # One file per sequence, stacked by MONAI's reader on a new first axis: those are the channels.
            if array.ndim != len(meta.get("spatial_shape", array.shape[1:])) + 1:
                raise ImageFileError(
                    path,
                    "wrong shape",
                    f"the row's sequence files {list(img.filenames)} stack to shape {tuple(array.shape)}; each "
                    "must hold one image or volume without a channel axis",
                )
            meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = 0
            meta[CHANNELS_META_KEY] = "channels"
        elif img.kind == "dicom":
            array = self._dicom_layout(array, meta, img.native)
        elif img.kind == "nifti":
            array = self._nifti_layout(array, meta, path)
        elif not isinstance(img.native, (list, tuple)) and array.ndim > 2:
            mode = getattr(img.native, "mode", "")
            meta[CHANNELS_META_KEY] = "colour+alpha" if mode in _PIL_ALPHA_MODES else "colour"
        return array, meta

    @staticmethod
    def _dicom_layout(array: np.ndarray, meta: dict, native: Any) -> np.ndarray:
        first = native[0] if isinstance(native, (list, tuple)) else native
        if isinstance(native, (list, tuple)) and len(native) > 1:
            return array  # several files stacked by MONAI as channels
        samples = int(first.get("SamplesPerPixel", 1) or 1)
        frames = int(first.get("NumberOfFrames", 1) or 1)
        # MONOCHROME1 stores white as 0: invert (after rescale) so every image reads brighter = higher.
        array = invert_monochrome1(array, first.get("PhotometricInterpretation"))
        if frames > 1 and array.ndim >= 3:
            # PydicomReader swaps the first two axes of (frames, rows, columns[, samples]); put the frames last so
            # the volume is (columns, rows, frames) like every other reader's x-first layout.
            order = (2, 0, 1, *range(3, array.ndim))
            array = np.transpose(array, order)
            meta[FRAMES_META_KEY] = frames
            meta["spatial_shape"] = np.asarray(array.shape[:3])
        if samples > 1 and array.ndim >= 3 and array.shape[-1] == samples:
            meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = -1
            photometric = str(first.get("PhotometricInterpretation", "")).strip().upper()
            meta[CHANNELS_META_KEY] = "colour" if photometric in _DICOM_COLOUR else "channels"
            meta["spatial_shape"] = np.asarray(array.shape[:-1])
        return array

    def _nifti_layout(self, array: np.ndarray, meta: dict, path: str) -> np.ndarray:
        # Singleton axes after the third (a 4D file with one time point, the NIfTI vector layout x,y,z,1,c) say
        # nothing about channels: drop them first.
        extra = [axis for axis in range(array.ndim - 1, 2, -1) if array.shape[axis] == 1]
        if extra:
            array = np.squeeze(array, axis=tuple(extra))
        if array.ndim <= 3:
            meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = float("nan")
            return array
        if array.ndim > 4:
            raise ImageFileError(
                path,
                "wrong shape",
                f"a NIfTI with {array.ndim} non-singleton axes {tuple(array.shape)}; at most x, y, z and one channel "
                "axis are supported",
                "save one volume (or one multi-sequence 4D volume) per file",
            )
        if self.channel_axis is None:
            count = array.shape[3]
            raise ImageFileError(
                path,
                "4D",
                f"a 4D NIfTI of shape {tuple(array.shape)}: its 4th axis holds {count} volumes (time points or "
                "sequences) and no channel axis is named, so it is not read (only one volume would be used)",
                f"set --channel_axis 3 to read the {count} volumes as channels (and --in_channels {count}), "
                "or save one volume per file",
            )
        if not -array.ndim <= self.channel_axis < array.ndim:
            raise ImageFileError(
                path, "wrong shape", f"channel_axis {self.channel_axis} is out of range for shape {tuple(array.shape)}"
            )
        meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = self.channel_axis % array.ndim
        meta[CHANNELS_META_KEY] = "channels"
        return array


def _source(image: Any) -> str | None:
    meta = getattr(image, "meta", None)
    source = meta.get("filename_or_obj") if isinstance(meta, Mapping) else None
    return str(source) if source else None


class SqueezeToSpatialDimsd(MapTransform):
    """Drops singleton spatial axes until the image has exactly ``spatial_dims`` of them.

    A 2D DICOM or NIfTI often loads as ``(C, H, W, 1)``; for a 2D network it must be ``(C, H, W)``. Trailing
    singleton axes are dropped first. An image that still has the wrong number of spatial axes (a real 3D volume
    or a multi-frame DICOM given to a 2D pipeline, or a 2D image given to a 3D one) raises
    :class:`~alr_monai.data.image_errors.ImageFileError` naming the file and the ``--spatial_dims`` to set
    (``ValueError`` for an in-memory image).
    """

    def __init__(self, keys: KeysCollection, spatial_dims: int, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.spatial_dims = spatial_dims

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            while image.ndim > self.spatial_dims + 1:
                singleton = [axis for axis in range(image.ndim - 1, 0, -1) if image.shape[axis] == 1]
                if not singleton:
                    break
                image = image.squeeze(singleton[0])
            if image.ndim != self.spatial_dims + 1:
                raise self._error(d[key], image, key)
            d[key] = image
        return d

    def _error(self, original: Any, image: Any, key: Hashable) -> ValueError:
        source = _source(original)
        expected = (
            f"expected a {self.spatial_dims}D image (channel + {self.spatial_dims} spatial axes), "
            f"got shape {tuple(image.shape)}"
        )
        if source is None:
            return ValueError(f"{key}: {expected}")
        meta = getattr(original, "meta", {})
        frames = int(meta.get(FRAMES_META_KEY, 1) or 1)
        if frames > 1 and self.spatial_dims == 2:
            return ImageFileError(
                source,
                "multi-frame",
                f"{expected}: a multi-frame DICOM with {frames} frames (a volume or a cine loop), not one 2D image",
                'set --spatial_dims 3 (and a 3-entry --image_size, e.g. "[64,64,64]") to read its frames as a '
                "volume, or export one frame per file",
            )
        if image.ndim > self.spatial_dims + 1:
            return ImageFileError(
                source,
                "wrong shape",
                f"{expected}: a {image.ndim - 1}D volume",
                'set --spatial_dims 3 and a 3-entry --image_size (e.g. "[64,64,64]") to train on volumes',
            )
        return ImageFileError(
            source,
            "wrong shape",
            f"{expected}: a {image.ndim - 1}D image",
            'set --spatial_dims 2 and a 2-entry --image_size (e.g. "[64,64]") to train on 2D images',
        )


def _to_channels(image: torch.Tensor, channels: int, layout: str | None = None) -> torch.Tensor:
    """``image`` with ``channels`` channels, or ValueError.

    ``layout`` is where the channels came from (:data:`CHANNELS_META_KEY`): ``"colour+alpha"`` drops the last
    channel, ``"colour"`` may be averaged to gray, ``"channels"`` (sequences, samples) must match exactly, and
    ``"single"`` may be repeated. None (an in-memory array) guesses from the count: 2 = gray + alpha, 4 = RGBA.
    """
    have = image.shape[0]
    if have == channels:
        return image
    if layout is None:
        # 2 channels = gray + alpha, 4 = RGB + alpha: the alpha channel is transparency, not intensity.
        colour = image[:1] if have == 2 else image[:3] if have == 4 else image
    elif layout == "colour+alpha":
        colour = image[:-1]
    else:
        colour = image
    if colour.shape[0] == channels:
        return colour
    if colour.shape[0] == 1:
        return colour.repeat(channels, *([1] * (colour.ndim - 1)))
    if colour.shape[0] == 3 and channels == 1 and layout in (None, "colour", "colour+alpha"):
        return colour.mean(dim=0, keepdim=True)
    raise ValueError(f"cannot turn an image with {have} channels into {channels} channels")


class ForceChannelsd(MapTransform):
    """Makes the channel axis exactly ``channels`` long.

    Gray is repeated (e.g. to 3 for an RGB network), colour (RGB) is averaged to 1, and an alpha channel is
    dropped, but only one the file marks as alpha (a PNG's RGBA or LA mode); for an in-memory array, 2 channels
    are read as gray + alpha and 4 as RGBA. Channels that are not colour (MR sequences of a 4D NIfTI, a DICOM's
    samples) are never dropped or averaged: their count must equal ``channels``. Any other combination, such as a
    20-channel volume for a 1-channel network, raises :class:`~alr_monai.data.image_errors.ImageFileError` naming
    the file and the ``--in_channels`` to set (``ValueError`` for an in-memory image).
    """

    def __init__(self, keys: KeysCollection, channels: int, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self.channels = channels

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            if isinstance(image, np.ndarray):
                image = torch.as_tensor(image)
            meta = getattr(image, "meta", None)
            layout = meta.get(CHANNELS_META_KEY) if isinstance(meta, Mapping) else None
            source = _source(image)
            try:
                d[key] = _to_channels(image, self.channels, layout)
            except ValueError as error:
                if source is None:
                    raise
                have = image.shape[0]
                what = {"colour+alpha": "colour + alpha", "channels": "sequences or samples"}.get(layout, layout)
                raise ImageFileError(
                    source,
                    "wrong channels",
                    f"{have} channels ({what}) cannot be made into the network's in_channels = {self.channels}",
                    f"set --in_channels {have} if every image has {have} channels, else convert this file",
                ) from error
        return d


class ArrayToTensord(MapTransform):
    """Turns an in-memory image array into a channel-first float32 tensor in [0, 1].

    Accepts numpy arrays or tensors shaped ``(*spatial)`` (gray) or ``(*spatial, C)`` with C in 1, 3, 4 (channel
    last, as MedMNIST and PIL give them). ``uint8`` is divided by 255; floating arrays are assumed to be in [0, 1]
    already and only cast.
    """

    def __init__(self, keys: KeysCollection, spatial_dims: int = 2, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.spatial_dims = spatial_dims

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = torch.as_tensor(np.asarray(d[key]) if not isinstance(d[key], torch.Tensor) else d[key])
            if image.ndim == self.spatial_dims:
                image = image.unsqueeze(0)
            elif image.ndim == self.spatial_dims + 1 and image.shape[-1] in (1, 3, 4):
                image = image.movedim(-1, 0)
            else:
                raise ValueError(f"{key}: expected a {self.spatial_dims}D array, got shape {tuple(image.shape)}")
            if image.dtype == torch.uint8:
                image = image.to(torch.float32) / 255.0
            elif image.is_floating_point():
                image = image.to(torch.float32)
            else:
                raise TypeError(f"{key}: expected uint8 or floating point data, got {image.dtype}")
            d[key] = image.contiguous()
        return d


class EnsureIntd(MapTransform):
    """Turns labels and indices given as numpy scalars or one-element arrays (MedMNIST labels are ``(1,)``) into
    Python ints, so default collation makes ``(B,)`` int64 tensors."""

    def __init__(self, keys: KeysCollection = ("label", "index"), allow_missing_keys: bool = True):
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            if not isinstance(value, int):
                array = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value)
                if array.size != 1 or not np.issubdtype(array.dtype, np.integer):
                    raise ValueError(f"{key}: expected one integer, got {value!r}")
                value = int(array.reshape(()))
            d[key] = value
        return d


def intensity_transform(intensity: str | Mapping[str, Any], keys: KeysCollection = ("image",)) -> MapTransform | None:
    """Builds the intensity transform named by a config value.

    Args:
        intensity: ``"minmax"`` (scale each image to [0, 1]), ``"none"`` (leave values as loaded), or
            ``{"window": [center, width]}`` for CT windowing: values in ``[center - width/2, center + width/2]``
            map linearly to [0, 1] and values outside are clipped.
        keys: image keys.

    Returns:
        The transform, or None for ``"none"``.
    """
    if isinstance(intensity, str):
        name = intensity.strip().lower()
        if name == "minmax":
            return ScaleIntensityd(keys=keys, minv=0.0, maxv=1.0)
        if name == "none":
            return None
        raise ValueError(f"unknown intensity {intensity!r}: use 'minmax', 'none' or {{'window': [center, width]}}")
    if isinstance(intensity, Mapping) and set(intensity) == {"window"}:
        window = list(intensity["window"])
        if len(window) != 2 or not float(window[1]) > 0:
            raise ValueError(f"window must be [center, width] with width > 0, got {intensity['window']!r}")
        center, width = float(window[0]), float(window[1])
        return ScaleIntensityRanged(
            keys=keys, a_min=center - width / 2, a_max=center + width / 2, b_min=0.0, b_max=1.0, clip=True
        )
    raise ValueError(f"unknown intensity {intensity!r}: use 'minmax', 'none' or {{'window': [center, width]}}")


def _check_spatial_size(spatial_size: Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    size = tuple(int(s) for s in ensure_tuple(spatial_size))
    if len(size) != spatial_dims:
        example = "[" + ",".join(["64"] * spatial_dims) + "]"
        raise ValueError(
            f"spatial_size {size} has {len(size)} entries but spatial_dims is {spatial_dims}: "
            f'give --image_size {spatial_dims} entries, e.g. "{example}"'
        )
    return size


def _geometry_transforms(
    spacing: Sequence[float] | None, orientation: str | None, spatial_dims: int, keys: KeysCollection
) -> list[Any]:
    """Orientationd then Spacingd for volumes, as asked; a clear error for a bad value or a 2D pipeline."""
    chain: list[Any] = []
    if orientation is not None and str(orientation).strip():
        codes = str(orientation).strip().upper()
        if spatial_dims != 3:
            raise ValueError(f"orientation {codes!r} applies to volumes only: set --spatial_dims 3 or drop it")
        if len(codes) != 3 or any(sum(c in pair for c in codes) != 1 for pair in ("LR", "AP", "SI")):
            raise ValueError(f"orientation {orientation!r} is not 3 axis codes such as 'RAS' or 'LPS'")
        # Affines are RAS (MONAI readers and read_series), so the labels are given rather than read from meta.
        chain.append(Orientationd(keys=keys, axcodes=codes, labels=(("L", "R"), ("P", "A"), ("I", "S"))))
    if spacing is not None:
        values = [float(v) for v in ensure_tuple(spacing)]
        if spatial_dims != 3:
            raise ValueError(f"spacing {values} applies to volumes only: set --spatial_dims 3 or drop it")
        if len(values) != 3 or not all(v > 0 for v in values):
            raise ValueError(
                f'spacing must be 3 positive numbers in mm (x, y, z), e.g. "[1.0,1.0,2.0]", got {spacing!r}'
            )
        chain.append(Spacingd(keys=keys, pixdim=values, mode="bilinear"))
    return chain


def build_image_transforms(
    spatial_size: Sequence[int],
    in_channels: int,
    spatial_dims: int = 2,
    intensity: str | dict = "minmax",
    augment: bool = False,
    keys: KeysCollection = ("image",),
    resize_mode: str = "area",
    channel_axis: int | None = None,
    spacing: Sequence[float] | None = None,
    orientation: str | None = None,
) -> Compose:
    """Builds the chain that loads manifest images (DICOM, NIfTI, PNG/JPEG) into network-ready tensors.

    Load (:class:`MedicalImageReader`) -> channel first -> drop singleton spatial axes -> [orientation ->
    spacing, volumes only, when asked] -> ``in_channels`` channels -> intensity -> resize -> optional random flip -> float32 tensor. Other keys (label, index, id) pass through,
    with label and index made plain ints.

    Args:
        spatial_size: output spatial shape, ``spatial_dims`` entries (first axis = image x / columns).
        in_channels: number of output channels (gray is repeated, RGB averaged, a PNG's alpha dropped; other
            channels, such as MR sequences, must number exactly ``in_channels``).
        spatial_dims: 2 for images, 3 for volumes.
        intensity: ``"minmax"``, ``"none"`` or ``{"window": [center, width]}``; see :func:`intensity_transform`.
            Windowing uses DICOM values after rescale slope/intercept, i.e. HU for CT.
        augment: add a random flip along the first spatial axis (left-right), probability 0.5.
        keys: image keys.
        resize_mode: interpolation for ``Resized``; ``"area"`` averages when shrinking, the usual case for
            clinical images, and never leaves the input value range.
        channel_axis: for NIfTI files with a 4th axis (sequences, time points): the axis read as channels
            (3 or -1); None refuses such files. See :class:`MedicalImageReader`.
        spacing: volumes only (``spatial_dims`` 3): resample to this voxel spacing in mm (x, y, z) before the
            resize, with the spacing read from the NIfTI affine or the DICOM series (``Spacingd``, trilinear).
            None keeps each volume's grid.
        orientation: volumes only: reorient to these axis codes (e.g. ``"RAS"``, ``Orientationd``) before the
            resampling and resize, so left, anterior and superior point the same way in every volume. None
            keeps the stored axis order.

    Returns:
        The ``Compose`` to give to ``monai.data.Dataset`` or ``CacheDataset``. Any per-file failure raises
        :class:`~alr_monai.data.image_errors.ImageFileError` naming the file (MONAI wraps it in a RuntimeError;
        :func:`~alr_monai.data.image_errors.find_image_error` finds it).
    """
    size = _check_spatial_size(spatial_size, spatial_dims)
    with warnings.catch_warnings():
        # LoadImaged also builds MONAI's default readers as fallbacks; the GPU DICOM one warns on every CPU machine
        # although MedicalImageReader is always tried first.
        warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader", category=UserWarning)
        loader = LoadImaged(keys=keys, reader=MedicalImageReader(channel_axis=channel_axis), image_only=True)
    transforms: list[Any] = [
        loader,
        EnsureChannelFirstd(keys=keys),
        SqueezeToSpatialDimsd(keys=keys, spatial_dims=spatial_dims),
        *_geometry_transforms(spacing, orientation, spatial_dims, keys),
        ForceChannelsd(keys=keys, channels=in_channels),
    ]
    scale = intensity_transform(intensity, keys=keys)
    if scale is not None:
        transforms.append(scale)
    transforms.append(Resized(keys=keys, spatial_size=size, mode=resize_mode))
    if augment:
        transforms.append(RandFlipd(keys=keys, prob=0.5, spatial_axis=0))
    # Plain tensors (track_meta=False) batch and all-gather like any other tensor.
    transforms.append(EnsureTyped(keys=keys, data_type="tensor", dtype=torch.float32, track_meta=False))
    transforms.append(EnsureIntd())
    return Compose(transforms)


class RandShiftd(MapTransform, RandomizableTransform):
    """Shift the image by up to ``max_shift`` pixels on each spatial axis, filling with edge values.

    The same as padding by ``max_shift`` and cropping the original size at a random place: a cheap guard
    against memorising noisy labels.
    """

    def __init__(self, keys: KeysCollection, max_shift: int, prob: float = 1.0) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.max_shift = int(max_shift)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform or self.max_shift <= 0:
            return d
        for key in self.key_iterator(d):
            image = torch.as_tensor(d[key])
            spatial = image.shape[1:]
            shifts = [int(self.R.randint(0, 2 * self.max_shift + 1)) for _ in spatial]
            pad = [self.max_shift] * (2 * len(spatial))
            padded = torch.nn.functional.pad(image.unsqueeze(0).float(), pad, mode="replicate").squeeze(0)
            window = tuple(slice(start, start + size) for start, size in zip(shifts, spatial, strict=True))
            d[key] = padded[(slice(None), *window)].to(image.dtype)
        return d


def build_array_transforms(
    in_channels: int,
    spatial_size: Sequence[int] | None = None,
    augment: bool = False,
    spatial_dims: int = 2,
    keys: KeysCollection = ("image",),
    resize_mode: str | None = None,
    rotate90: bool = False,
    crop_padding: int = 0,
) -> Compose:
    """Builds the chain for in-memory ``uint8`` images such as MedMNIST.

    Items are ``{"image": array (H, W) or (H, W, 3), "label", "index", "id"}``; the image becomes a float32
    ``(in_channels, H, W)`` tensor in [0, 1].

    Args:
        in_channels: number of output channels.
        spatial_size: resize to this shape if given (else keep the array's shape).
        augment: add a random flip along the last spatial axis (image width), probability 0.5.
        spatial_dims: 2 for images, 3 for volumes (``(D, H, W)`` arrays).
        keys: image keys.
        resize_mode: interpolation for ``Resized``; defaults to bilinear (trilinear in 3D) because MedMNIST images
            are usually enlarged, where ``"area"`` would give blocky nearest-neighbour images.
        rotate90: with ``augment``, also flip the other axis and rotate by a random multiple of 90 degrees
            (for orientation-free images such as microscopy; not for images with a laterality).
        crop_padding: with ``augment``, pad by this many pixels (edge values) and crop back at a random place.

    Returns:
        The ``Compose`` to give to ``monai.data.Dataset`` or ``CacheDataset``.
    """
    transforms: list[Any] = [
        ArrayToTensord(keys=keys, spatial_dims=spatial_dims),
        ForceChannelsd(keys=keys, channels=in_channels),
    ]
    if spatial_size is not None:
        size = _check_spatial_size(spatial_size, spatial_dims)
        mode = resize_mode or ("bilinear" if spatial_dims == 2 else "trilinear")
        # No anti_aliasing: MONAI's Gaussian pre-smoothing pads with zeros and darkens the image borders.
        transforms.append(Resized(keys=keys, spatial_size=size, mode=mode))
    if augment:
        transforms.append(RandFlipd(keys=keys, prob=0.5, spatial_axis=spatial_dims - 1))
        if rotate90 and spatial_dims == 2:
            transforms.append(RandFlipd(keys=keys, prob=0.5, spatial_axis=0))
            transforms.append(RandRotate90d(keys=keys, prob=0.75, max_k=3, spatial_axes=(0, 1)))
        if crop_padding > 0:
            transforms.append(RandShiftd(keys=keys, max_shift=crop_padding))
    transforms.append(EnsureTyped(keys=keys, data_type="tensor", dtype=torch.float32, track_meta=False))
    transforms.append(EnsureIntd())
    return Compose(transforms)


def original_image_transforms(chain: Any) -> tuple[Compose, bool] | None:
    """The part of a manifest image chain that loads the ORIGINAL image: full resolution, training intensity.

    The expert's query sheet shows each queried file as it is, beside the network input. It is read with the very
    steps that read it for training (:class:`MedicalImageReader`, so MONOCHROME1 is inverted and CT is in HU,
    channel first, then the run's intensity: min-max or the CT window), without what follows them for the network
    (channel forcing, spacing, resize, flips).

    Args:
        chain: a chain from :func:`build_image_transforms` (a ``Compose``, or a dataset holding one as ``transform``).

    Returns:
        ``(transform, scaled)``: the transform of a ``{"image": path}`` item, and True when it ends in the run's
        intensity scaling (values in [0, 1], to be shown as they are) rather than raw values; None when ``chain``
        does not load files with :class:`MedicalImageReader` (in-memory MedMNIST arrays have no original file).
    """
    chain = getattr(chain, "transform", chain)
    steps = list(getattr(chain, "transforms", ()))
    loaders = [
        step
        for step in steps
        if isinstance(step, LoadImaged)
        and any(isinstance(reader, MedicalImageReader) for reader in getattr(step._loader, "readers", ()))
    ]
    if not loaders:
        return None
    kept: list[Any] = []
    scaled = False
    for step in steps:
        if step is loaders[0] or isinstance(step, EnsureChannelFirstd):
            kept.append(step)
        elif isinstance(step, (ScaleIntensityd, ScaleIntensityRanged)):
            kept.append(step)
            scaled = True
    return Compose(kept), scaled
