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
    RandFlipd,
    RandomizableTransform,
    RandRotate90d,
    Resized,
    ScaleIntensityd,
    ScaleIntensityRanged,
)
from monai.utils import ensure_tuple

from alr_monai.data.manifest import ImageKind, image_kind

__all__ = [
    "MedicalImageReader",
    "SqueezeToSpatialDimsd",
    "ForceChannelsd",
    "ArrayToTensord",
    "EnsureIntd",
    "build_image_transforms",
    "build_array_transforms",
    "intensity_transform",
]

# PIL modes whose raw arrays are not intensities (palette indices, CMYK ink, ...) and need converting first.
_PIL_MODES_TO_RGB = {"P": "RGBA", "PA": "RGBA", "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB"}


def _pil_to_intensity_mode(image: Any) -> Any:
    """PILReader converter: turn palette/CMYK/... images into RGB(A) so pixel values are intensities."""
    target = _PIL_MODES_TO_RGB.get(image.mode)
    return image.convert(target) if target is not None else image


@dataclass
class _ReadImage:
    """What :meth:`MedicalImageReader.read` returns: the native image object and which reader made it."""

    kind: ImageKind
    native: Any


class MedicalImageReader(ImageReader):
    """Reads DICOM, NIfTI and PNG/JPEG files, choosing the MONAI reader by file extension.

    ``.dcm`` goes to ``PydicomReader`` (rescale slope/intercept applied, so CT comes out in HU), ``.nii``/``.nii.gz``
    to ``NibabelReader`` and ``.png``/``.jpg``/``.jpeg`` to ``PILReader`` (palette images converted to RGB(A)).
    Unlike ``LoadImage``'s automatic choice, the result does not depend on ``MONAI_DICOM_READER`` or on whether
    ITK is installed.
    """

    def __init__(self) -> None:
        super().__init__()
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
        """Reads one file (or several of the same kind, stacked as channels) with the matching MONAI reader."""
        filenames = ensure_tuple(data)
        kind = self._kind(filenames)
        if kind is None:
            raise ValueError(f"unsupported or mixed image file types: {[str(f) for f in filenames]}")
        return _ReadImage(kind, self._readers[kind].read(data, **kwargs))

    def get_data(self, img: _ReadImage) -> tuple[np.ndarray, dict]:
        """Returns the array and metadata from the reader that read ``img``."""
        return self._readers[img.kind].get_data(img.native)


class SqueezeToSpatialDimsd(MapTransform):
    """Drops singleton spatial axes until the image has exactly ``spatial_dims`` of them.

    A 2D DICOM or NIfTI often loads as ``(C, H, W, 1)``; for a 2D network it must be ``(C, H, W)``. Trailing
    singleton axes are dropped first. An image that still has the wrong number of spatial axes (a real 3D volume
    given to a 2D pipeline, or a 2D image given to a 3D one) raises ``ValueError`` naming the file.
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
                source = getattr(image, "meta", {}).get("filename_or_obj", key)
                raise ValueError(
                    f"{source}: expected a {self.spatial_dims}D image (channel + {self.spatial_dims} spatial axes), "
                    f"got shape {tuple(image.shape)}"
                )
            d[key] = image
        return d


def _to_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    have = image.shape[0]
    if have == channels:
        return image
    # 2 channels = gray + alpha, 4 = RGB + alpha: the alpha channel is transparency, not intensity.
    colour = image[:1] if have == 2 else image[:3] if have == 4 else image
    if colour.shape[0] == channels:
        return colour
    if colour.shape[0] == 1:
        return colour.repeat(channels, *([1] * (colour.ndim - 1)))
    if colour.shape[0] == 3 and channels == 1:
        return colour.mean(dim=0, keepdim=True)
    raise ValueError(f"cannot turn an image with {have} channels into {channels} channels")


class ForceChannelsd(MapTransform):
    """Makes the channel axis exactly ``channels`` long.

    Gray is repeated (e.g. to 3 for an RGB network), RGB is averaged to 1, an alpha channel (gray+alpha or RGBA) is
    dropped. Other combinations, such as a 5-channel image for a 3-channel network, raise ``ValueError``.
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
            d[key] = _to_channels(image, self.channels)
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
        raise ValueError(f"spatial_size {size} has {len(size)} entries but spatial_dims is {spatial_dims}")
    return size


def build_image_transforms(
    spatial_size: Sequence[int],
    in_channels: int,
    spatial_dims: int = 2,
    intensity: str | dict = "minmax",
    augment: bool = False,
    keys: KeysCollection = ("image",),
    resize_mode: str = "area",
) -> Compose:
    """Builds the chain that loads manifest images (DICOM, NIfTI, PNG/JPEG) into network-ready tensors.

    Load (:class:`MedicalImageReader`) -> channel first -> drop singleton spatial axes -> ``in_channels`` channels
    -> intensity -> resize -> optional random flip -> float32 tensor. Other keys (label, index, id) pass through,
    with label and index made plain ints.

    Args:
        spatial_size: output spatial shape, ``spatial_dims`` entries (first axis = image x / columns).
        in_channels: number of output channels (gray is repeated, RGB averaged, alpha dropped).
        spatial_dims: 2 for images, 3 for volumes.
        intensity: ``"minmax"``, ``"none"`` or ``{"window": [center, width]}``; see :func:`intensity_transform`.
            Windowing uses DICOM values after rescale slope/intercept, i.e. HU for CT.
        augment: add a random flip along the first spatial axis (left-right), probability 0.5.
        keys: image keys.
        resize_mode: interpolation for ``Resized``; ``"area"`` averages when shrinking, the usual case for
            clinical images, and never leaves the input value range.

    Returns:
        The ``Compose`` to give to ``monai.data.Dataset`` or ``CacheDataset``.
    """
    size = _check_spatial_size(spatial_size, spatial_dims)
    with warnings.catch_warnings():
        # LoadImaged also builds MONAI's default readers as fallbacks; the GPU DICOM one warns on every CPU machine
        # although MedicalImageReader is always tried first.
        warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader", category=UserWarning)
        loader = LoadImaged(keys=keys, reader=MedicalImageReader(), image_only=True)
    transforms: list[Any] = [
        loader,
        EnsureChannelFirstd(keys=keys),
        SqueezeToSpatialDimsd(keys=keys, spatial_dims=spatial_dims),
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
