"""The training data order: a function of ``(seed, iteration)`` only, and seeded
augmentation.

Exact resume: the data order is a function of ``(seed, iteration)`` only
(:class:`ResumableBatchSampler`) and the augmentation of each image is seeded by its
position in that stream (:class:`SeededItems`), so a run resumed from iteration k sees
the same batches as one never stopped; the checkpoint holds everything else (see
:mod:`ssd_tutorial.trainer`).

Several processes (``torchrun``): ``batch_size`` is the global batch; process r takes
its slice of every global batch, so W processes read the same images as one.
:func:`collate_to_flat` packs a batch's boxes and labels into one tensor each (one
host->device copy each).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ssd_tutorial.data import detection_collate

__all__ = ["ResumableBatchSampler", "SeededItems", "collate_to_flat", "mix_seed"]


def mix_seed(*numbers: int) -> int:
    """A deterministic 63-bit seed from a few integers (SplitMix64-style mixing)."""
    x = 0x9E3779B97F4A7C15
    for n in numbers:
        x = (
            x ^ (int(n) & 0xFFFFFFFFFFFFFFFF)
        ) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


class ResumableBatchSampler:
    """Batches of ``(dataset index, stream position)`` pairs whose order depends only on
    the seed.

    Epoch e is the permutation ``randperm(num_items)`` drawn from a generator seeded
    with ``(seed, e)``; it is cut into global batches of ``global_batch`` items (an
    incomplete last batch is dropped).  Iteration i reads global batch i of that endless
    stream, so starting at ``start_iteration`` replays exactly what an uninterrupted run
    would have read.  With ``world_size`` processes, process ``rank`` yields its slice
    ``[rank*b, (rank+1)*b)`` of each global batch (``b = global_batch // world_size``).
    The stream position of an item seeds its augmentation (see :class:`SeededItems`).
    """

    def __init__(
        self,
        num_items: int,
        global_batch: int,
        seed: int,
        start_iteration: int = 0,
        end_iteration: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if global_batch % world_size:
            raise ValueError(
                f"batch_size {global_batch} is not divisible by the {world_size} "
                "processes"
            )
        if num_items < global_batch:
            raise ValueError(
                f"the dataset has {num_items} items, fewer than one batch of "
                f"{global_batch}"
            )
        self.num_items = num_items
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.seed = seed
        self.start_iteration = start_iteration
        self.end_iteration = end_iteration
        self.rank = rank
        self.batches_per_epoch = num_items // global_batch
        # (epoch, its order): one randperm per epoch
        self._cached_order: tuple[int, list[int]] = (
            -1,
            [],
        )

    def epoch_order(self, epoch: int) -> Tensor:
        """``[num_items]`` permutation used in ``epoch``."""
        generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
        return torch.randperm(self.num_items, generator=generator)

    def batch(self, iteration: int) -> list[tuple[int, int]]:
        """This process's ``(index, position)`` pairs of global batch ``iteration``."""
        epoch, k = divmod(iteration, self.batches_per_epoch)
        if self._cached_order[0] != epoch:
            self._cached_order = (epoch, self.epoch_order(epoch).tolist())
        order = self._cached_order[1]
        first = k * self.global_batch + self.rank * self.local_batch
        position = iteration * self.global_batch + self.rank * self.local_batch
        return [(order[first + j], position + j) for j in range(self.local_batch)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        iteration = self.start_iteration
        while self.end_iteration is None or iteration < self.end_iteration:
            yield self.batch(iteration)
            iteration += 1

    def __len__(self) -> int:
        if self.end_iteration is None:
            raise TypeError("an endless sampler has no length")
        return max(0, self.end_iteration - self.start_iteration)


class SeededItems(Dataset):
    """``dataset[index]`` with every random generator seeded by ``(seed, position)``.

    Augmentations draw from the global torch / numpy / Python generators; seeding them
    per item makes the augmented image a function of its place in the data stream,
    whatever worker process builds it and whether the run was resumed.  The caller's
    generator states are restored afterwards, so this has no side effect in the main
    process.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, position = key
        item_seed = mix_seed(self.seed, 7919, position)
        saved = (torch.get_rng_state(), np.random.get_state(), random.getstate())
        try:
            # The CPU generator only: torch.manual_seed also queues a lazy seeding of
            # every accelerator generator, which records a Python stack trace each call
            # (about 1 ms).
            torch.default_generator.manual_seed(item_seed)
            np.random.seed(item_seed % 2**32)
            random.seed(item_seed)
            return self.dataset[index]
        finally:
            torch.set_rng_state(saved[0])
            np.random.set_state(saved[1])
            random.setstate(saved[2])


def collate_to_flat(
    batch: Sequence[tuple[Tensor, dict[str, Any]]],
) -> tuple[Tensor | list[Tensor], Tensor, Tensor, list[int]]:
    """Stack images; concatenate every box and label into one tensor (one host->device
    copy each).

    Returns ``(images [B, 3, H, W], boxes [sum G_i, 4], labels [sum G_i], counts [G_i
    per image])``.
    Images of different sizes (photos not yet augmented: ``augment_on_gpu``) stay a list
    of ``[3, H_i, W_i]``, which :func:`ssd_tutorial.gpu_augmentation.gpu_ssd_augment`
    takes.
    """
    if len({tuple(image.shape) for image, _ in batch}) > 1:
        images: Tensor | list[Tensor] = [image for image, _ in batch]
        targets = [target for _, target in batch]
    else:
        images, targets = detection_collate(batch)
    counts = [int(t["boxes"].shape[0]) for t in targets]
    # [sum G_i, 4]
    boxes = torch.cat([t["boxes"].reshape(-1, 4).float() for t in targets])
    labels = torch.cat([t["labels"].reshape(-1).long() for t in targets])  # [sum G_i]
    return images, boxes, labels, counts
