"""Published weight files: where each comes from, where it is cached, and how it is
checked.

Files are cached where torch.hub keeps checkpoints (:func:`published_file`:
``$TORCH_HOME/hub/checkpoints/<file>``, by default ``~/.cache/torch/hub/checkpoints/``);
offline, a missing file gives an :class:`~ssd_tutorial.cli.ExternalError` naming the URL
and the path to put it at.  Every file is read with ``weights_only=True``.
torchvision's file name carries the first 8 hex digits of its SHA-256, checked on
download and again on the cached copy; amdegroot publishes none, so only
``expected_sha256`` is checked (and, by :mod:`ssd_tutorial.pretrained`, the content:
every key and shape).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torchvision.models.detection import SSD300_VGG16_Weights

from ssd_tutorial.backbone_weights import download_state_dict
from ssd_tutorial.checkpoint import load_checkpoint
from ssd_tutorial.cli import ExternalError
from ssd_tutorial.files import file_digest

__all__ = [
    "PublishedWeights",
    "PUBLISHED",
    "published_file",
    "sha256_of",
    "fetch_state_dict",
    "read_state_file",
]


@dataclass(frozen=True)
class PublishedWeights:
    """One published file: where it comes from, what it holds, and how to check it."""

    name: str
    url: str
    layout: str  # "torchvision", "ssd.pytorch" or "ssd.pytorch-vgg"
    description: str


PUBLISHED: dict[str, PublishedWeights] = {
    w.name: w
    for w in (
        PublishedWeights(
            "torchvision-coco",
            # torchvision.models.detection.SSD300_VGG16_Weights.COCO_V1.url (torchvision
            # 0.29)
            "https://download.pytorch.org/models/ssd300_vgg16_coco-b556d3b4.pth",
            "torchvision",
            "torchvision ssd300_vgg16, SSD300_VGG16_Weights.COCO_V1 (COCO val2017 box "
            "AP 25.1)",
        ),
        PublishedWeights(
            "ssd-pytorch-voc",
            # amdegroot/ssd.pytorch README.md, "Use a pre-trained SSD network for
            # detection"
            "https://s3.amazonaws.com/amdegroot-models/ssd300_mAP_77.43_v2.pth",
            "ssd.pytorch",
            "amdegroot/ssd.pytorch ssd300_mAP_77.43_v2.pth (VOC07+12 trainval, "
            "VOC2007 test mAP 77.43)",
        ),
        PublishedWeights(
            "ssd-pytorch-vgg16-reducedfc",
            # amdegroot/ssd.pytorch README.md, "Training SSD"
            "https://s3.amazonaws.com/amdegroot-models/vgg16_reducedfc.pth",
            "ssd.pytorch-vgg",
            "amdegroot/ssd.pytorch vgg16_reducedfc.pth (ImageNet VGG16, fc6/fc7 "
            "reduced; a backbone)",
        ),
    )
}


def published_file(name: str) -> Path:
    """Where torch.hub keeps (or will keep) the file of published weights ``name``."""
    return (
        Path(torch.hub.get_dir())
        / "checkpoints"
        / os.path.basename(_published(name).url)
    )


def sha256_of(path: str | Path) -> str:
    """SHA-256 of a file, hex (to pin a copy you trust with ``expected_sha256``)."""
    return file_digest(path, "sha256").hexdigest()


def _published(name: str) -> PublishedWeights:
    if name not in PUBLISHED:
        raise ValueError(
            f"unknown published weights {name!r}; known: {', '.join(PUBLISHED)}"
        )
    return PUBLISHED[name]


def _offline_message(weights: PublishedWeights, err: BaseException) -> str:
    path = published_file(weights.name)
    return (
        f"could not download {weights.name!r} from {weights.url} "
        f"({type(err).__name__}: {err}). Without a network: download that URL on a "
        "machine with internet and put the file at\n"
        f"  {path}\n"
        "(torch.hub's checkpoints folder; TORCH_HOME moves it), or pass the file's "
        f"path instead of the name (--weights /path/to/{path.name})."
    )


def _check_file_hash(
    weights: PublishedWeights, path: Path, expected_sha256: str | None
) -> None:
    """torchvision's hash prefix from the file name (re-checked: torch.hub checks only
    downloads), and ``expected_sha256`` when given."""
    digest: str | None = None
    # torch.hub's HASH_REGEX convention
    match = re.search(r"-([a-f0-9]{8,})\.", path.name)
    if weights.layout == "torchvision" and match:
        digest = sha256_of(path)
        if not digest.startswith(match.group(1)):
            raise ExternalError(
                f"{path}: SHA-256 {digest[:16]}... does not start with "
                f"{match.group(1)} as its name says (a corrupt or partial copy?); "
                "delete it to download again"
            )
    if expected_sha256 is not None:
        digest = digest or sha256_of(path)
        if digest != expected_sha256.lower():
            raise ExternalError(
                f"{path}: SHA-256 {digest} differs from the expected {expected_sha256}"
            )


def _download_state_dict(name: str, progress: bool = True) -> dict[str, Tensor]:
    """The state dict of published weights ``name``: from torch.hub's cache, or
    downloaded into it (:func:`ssd_tutorial.backbone_weights.download_state_dict`, the
    one network call). torchvision's file goes through its weights API, which checks the
    hash prefix of the file name when downloading; amdegroot's through its URL.  Both
    load with ``weights_only=True``.
    """
    weights = _published(name)
    if weights.layout == "torchvision":
        return download_state_dict(
            SSD300_VGG16_Weights.COCO_V1,
            progress,
            check_hash=True,
            weights_only=True,
            map_location="cpu",
        )
    return download_state_dict(
        weights.url,
        progress,
        model_dir=str(published_file(name).parent),
        check_hash=False,  # no hash in amdegroot's file names
    )


def fetch_state_dict(
    name: str, progress: bool = True, expected_sha256: str | None = None
) -> dict[str, Tensor]:
    """Published weights ``name`` (cached or downloaded) with failures explained, and
    the cached file's hash checked (torchvision's name prefix; ``expected_sha256`` when
    given)."""
    weights = _published(name)
    path = published_file(name)
    had_file = path.is_file()
    try:
        state = _download_state_dict(name, progress)
    except Exception as err:
        if had_file:  # the cached copy itself is unreadable: no network would help
            raise ExternalError(
                f"cannot read the cached {name!r} weights {path} "
                f"({type(err).__name__}: {err}); delete it to download again from "
                f"{weights.url}"
            ) from err
        raise ExternalError(_offline_message(weights, err)) from err
    if path.is_file():  # absent only when a test replaced the download
        _check_file_hash(weights, path, expected_sha256)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ExternalError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return _strip_module_prefix(state)


def _strip_module_prefix(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Keys saved from an ``nn.DataParallel`` wrapper start with ``module.``; drop
    it."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return state


def read_state_file(
    path: str | Path, expected_sha256: str | None = None
) -> dict[str, Tensor]:
    """A state-dict file read with ``weights_only=True`` (a ``{"state_dict": ...}``
    wrapper and ``module.`` prefixes of nn.DataParallel removed), its SHA-256 checked
    when given."""
    path = Path(path)
    state = load_checkpoint(path)  # weights_only=True; RuntimeError for pickled objects
    if (
        expected_sha256 is not None
        and (got := sha256_of(path)) != expected_sha256.lower()
    ):
        raise ExternalError(
            f"{path}: SHA-256 {got} differs from the expected {expected_sha256}"
        )
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return _strip_module_prefix(state)
