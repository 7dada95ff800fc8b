"""Image files: decoding to RGB uint8 tensors, JPEG encoding, and reading an image's
size.

Every decoder here returns the same thing, ``uint8 [3, H, W]`` RGB, whatever the file
holds (grayscale, RGBA, CMYK, 16-bit, the first frame of an animation).  The datasets of
:mod:`ssd_tutorial.data` read their images with :func:`read_image`; ``detect`` checks an
image's size with :func:`image_header_size` before decoding it; the GPU training path
decodes JPEG bytes in batches with :func:`decode_jpegs`.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torchvision.io as torchvision_io
from PIL import Image, UnidentifiedImageError
from torch import Tensor

__all__ = [
    "image_backend",
    "read_image",
    "image_header_size",
    "encode_jpeg",
    "write_jpeg",
    "decode_jpegs",
]


# Three decoders, one result.  torchvision >= 0.29 deprecates its image codecs in favour
# of TorchCodec (>= 0.16); TorchCodec needs a recent torch (0.16: torch >= 2.11), and a
# machine may lack it.  So: TorchCodec
# where it imports, else torchvision.io (its deprecation silenced: it is the fallback,
# chosen on purpose), else PIL for the files both refuse (some CMYK JPEGs).  All give
# the same pixels (tests/test_data.py checks it file by file).
class _Codecs(NamedTuple):
    decode_image: Callable[..., Tensor]
    decode_jpeg: Callable[..., Any]
    JpegEncoder: Callable[..., Any]


# looked up once a process: read_image runs per item, and a failed import is slow
@functools.cache
def _torchcodec_image_codecs() -> _Codecs | None:
    """TorchCodec's image codecs, or None where it is absent or unusable."""
    try:
        from torchcodec.decoders import decode_image, decode_jpeg
        from torchcodec.encoders import JpegEncoder
    # ImportError, or its native library refusing this torch (RuntimeError, OSError)
    except Exception:
        return None
    return _Codecs(decode_image, decode_jpeg, JpegEncoder)


@contextmanager
def _quiet_torchvision_io() -> Iterator[None]:
    """Silence the DeprecationWarning that torchvision >= 0.29 gives on every image
    decode/encode: we call it only where TorchCodec is missing, and the warning would
    flood a chapter."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", category=DeprecationWarning, module=r"torchvision\.io"
        )
        yield


def image_backend() -> str:
    """The decoder :func:`read_image` tries first: ``"torchcodec"`` or
    ``"torchvision"``."""
    return "torchcodec" if _torchcodec_image_codecs() is not None else "torchvision"


def read_image(path: str | Path, backend: str | None = None) -> Tensor:
    """Decode an image file to RGB uint8 ``[3, H, W]``.

    Grayscale, RGBA and CMYK files all come out as 3-channel RGB; 16-bit files (PNG) as
    8 bits, scaled (65535 -> 255, rounded), as TorchCodec does.  ``backend``
    (``"torchcodec"``, ``"torchvision"`` or ``"pil"``; default :func:`image_backend`)
    picks the first decoder tried; PIL is the fallback for what the others refuse (e.g.
    some CMYK JPEGs).  A missing file raises ``FileNotFoundError``; an undecodable one
    ``ValueError``; both name the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    backend = backend or image_backend()
    if backend not in ("torchcodec", "torchvision", "pil"):
        raise ValueError(
            f"unknown image backend {backend!r}: use 'torchcodec', 'torchvision' or "
            "'pil'"
        )
    codecs = _torchcodec_image_codecs() if backend == "torchcodec" else None
    if backend == "torchcodec" and codecs is None:
        raise ValueError(
            "image backend 'torchcodec' asked for, but torchcodec does not import"
        )
    image = None
    try:
        if codecs is not None:
            # [3, H, W] uint8 (or [N, 3, H, W])
            image = codecs.decode_image(path.read_bytes(), mode="RGB")
        elif backend == "torchvision":
            with _quiet_torchvision_io():
                data = torchvision_io.read_file(str(path))
                # [3, H, W] uint8
                image = torchvision_io.decode_image(
                    data, mode=torchvision_io.ImageReadMode.RGB
                )
    except (RuntimeError, ValueError):
        image = None  # refused: PIL below
    if image is not None and image.ndim == 4:
        image = image[0]  # first frame of an animated GIF/WebP, as PIL gives
    # torchvision.io keeps a 16-bit PNG's depth
    if image is not None and image.dtype == torch.uint16:
        image = _to_8_bits(image)
    if (
        image is not None
        and image.ndim == 3
        and image.shape[0] == 3
        and image.dtype == torch.uint8
    ):
        return image.contiguous()
    return _read_image_pil(path)


def _to_8_bits(image: Tensor) -> Tensor:
    """16-bit pixels (uint16 tensor or array, any shape) -> uint8: round(v * 255 /
    65535), as TorchCodec."""
    wide = (
        image.to(torch.int32)
        if isinstance(image, Tensor)
        else torch.from_numpy(image.astype(np.int32))
    )
    return ((wide * 255 + 65535 // 2) // 65535).to(torch.uint8)


def encode_jpeg(image: Tensor, quality: int = 90) -> Tensor:
    """uint8 ``[3, H, W]`` (or ``[1, H, W]``) ``image`` -> its JPEG file bytes, uint8
    ``[num_bytes]``."""
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(
            f"encode_jpeg wants uint8 [3, H, W] or [1, H, W], got {image.dtype} "
            f"{list(image.shape)}"
        )
    codecs = _torchcodec_image_codecs()
    if codecs is not None:
        return codecs.JpegEncoder(image.contiguous()).to_tensor(quality=quality)
    with _quiet_torchvision_io():
        return torchvision_io.encode_jpeg(image, quality=quality)


def write_jpeg(image: Tensor, path: str | Path, quality: int = 90) -> None:
    """Encode uint8 ``[3, H, W]`` (or ``[1, H, W]``) ``image`` as a JPEG file at
    ``path``."""
    Path(path).write_bytes(encode_jpeg(image, quality).numpy().tobytes())


def decode_jpegs(
    data: list[Tensor], device: str | torch.device = "cpu"
) -> list[Tensor]:
    """JPEG file bytes (uint8 ``[num_bytes]`` each) -> RGB uint8 ``[3, H, W]`` each,
    decoded on ``device`` (one batched nvJPEG call on CUDA).  Grayscale JPEGs come out
    with 3 equal channels."""
    codecs = _torchcodec_image_codecs()
    if codecs is not None:
        return list(codecs.decode_jpeg(list(data), mode="RGB", device=device))
    with _quiet_torchvision_io():
        try:
            return list(
                torchvision_io.decode_jpeg(
                    list(data), mode=torchvision_io.ImageReadMode.RGB, device=device
                )
            )
        # an nvjpeg without RGB conversion: expand grey here
        except (
            RuntimeError,
            ValueError,
        ):
            return [
                im.expand(3, -1, -1)
                for im in torchvision_io.decode_jpeg(list(data), device=device)
            ]


def _read_image_pil(path: Path) -> Tensor:
    try:
        with Image.open(path) as pil:
            # 16-bit grey: convert("RGB") would clip it at 255, not scale it
            if pil.mode.startswith("I;16"):
                gray = _to_8_bits(np.asarray(pil))  # [H, W] uint8
                return gray.expand(3, -1, -1).contiguous()  # [3, H, W]
            if pil.mode in ("I", "F"):
                raise ValueError(
                    f"{pil.mode!r} pixels (32-bit integer or float): save it with 8 "
                    "bits per channel"
                )
            array = np.asarray(pil.convert("RGB"))  # [H, W, 3] uint8
    except (
        UnidentifiedImageError,
        OSError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombError,
    ) as err:
        raise ValueError(f"cannot decode image {path}: {err}") from err
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()  # [3, H, W]


def image_header_size(path: str | Path) -> tuple[int, int] | None:
    """``(width, height)`` of an image file from its header, without decoding its pixels
    (PIL opens files lazily); None when PIL cannot read the header.  For a size check
    before decoding."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as pil:
                return pil.size
    except Image.DecompressionBombError as err:
        raise ValueError(
            f"{path}: {err}"
        ) from err  # over twice PIL's own pixel limit (179 megapixels)
    except (OSError, ValueError, SyntaxError):
        return None
