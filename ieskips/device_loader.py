"""A data set held on the trial's device, batches drawn and augmented there.

On a GPU the torchvision pipeline (PIL crops and flips in worker processes, a host-to-device copy per
batch) costs more than a small network's step; airbench-style training keeps CIFAR-10 on the GPU as
uint8 (150 MB) and augments whole batches there. The same code runs on the CPU.

Order and augmentation come from one CPU generator seeded per trial, drawn at the start of each
epoch, so a checkpoint that saves the generator's state resumes exactly (as with the DataLoader,
whose ``generator`` attribute this loader mirrors). Shuffling draws the same permutation as a
DataLoader with that generator, so without augmentation the two give the same batches.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset, TensorDataset

PAD = 4  # random crop with zero padding 4, as the authors' code and the adversarial-training literature use


class DeviceLoader:
    """Batches of ``(images in [0, 1] float32, labels)`` on ``device``; ``augment``: random crop
    (zero padding 4) and horizontal flip per example, then, with ``rotate`` degrees, a rotation by an
    angle drawn from [-rotate, rotate] (torchvision's RandomRotation: about the centre, nearest, fill 0)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, shuffle: bool, seed: int,
                 augment: bool = False, rotate: float = 0.0, device="cpu"):
        self.images, self.labels = images.to(device), labels.to(device)
        self.batch_size, self.shuffle, self.augment, self.rotate = batch_size, shuffle, augment, rotate
        self.generator = torch.Generator().manual_seed(seed)

    @classmethod
    def from_dataset(cls, dataset: Dataset, batch_size: int, **options) -> "DeviceLoader":
        return cls(*raw_tensors(dataset), batch_size, **options)

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __iter__(self):
        n = len(self.labels)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        if self.augment:  # drawn for the whole epoch at once: the generator advances the same way every epoch
            offsets = torch.randint(0, 2 * PAD + 1, (n, 2), generator=self.generator)
            flips = torch.rand(n, generator=self.generator) < 0.5
            angles = (torch.rand(n, generator=self.generator) * 2 - 1) * self.rotate if self.rotate else None
        device = self.images.device
        for start in range(0, n, self.batch_size):
            chosen = order[start:start + self.batch_size].to(device)
            images = as_float(self.images[chosen])
            if self.augment:
                part = slice(start, start + self.batch_size)
                images = crop_flip(images, offsets[part].to(device), flips[part].to(device))
                if angles is not None:
                    images = rotated(images, angles[part].to(device))
            yield images, self.labels[chosen]


def as_float(images: torch.Tensor) -> torch.Tensor:
    return images.float().div_(255) if images.dtype == torch.uint8 else images.float()


def crop_flip(images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Per example a ``H x W`` window at ``offsets`` (row, column) of the zero-padded image, mirrored
    left-right where ``flips``; one gather for the whole batch."""
    b, _, h, w = images.shape
    padded = F.pad(images, (PAD, PAD, PAD, PAD))
    rows = offsets[:, 0, None] + torch.arange(h, device=images.device)  # (B, H)
    cols = offsets[:, 1, None] + torch.arange(w, device=images.device)  # (B, W)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch = torch.arange(b, device=images.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def rotated(images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Each image rotated about its centre by its angle; nearest neighbour, zeros outside (as
    torchvision's RandomRotation with its defaults)."""
    radians = torch.deg2rad(degrees.float())
    cos, sin, zero = radians.cos(), radians.sin(), torch.zeros_like(radians)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def raw_tensors(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The examples as ``(N, C, H, W)`` images (uint8 where the set stores them so, no transform
    applied) and ``(N,)`` labels; a ``Subset`` keeps its order."""
    base, chosen = dataset, None
    if isinstance(dataset, Subset):
        base, chosen = dataset.dataset, torch.as_tensor(dataset.indices, dtype=torch.long)
    if isinstance(base, TensorDataset):
        images, labels = base.tensors
    elif getattr(base, "data", None) is not None and getattr(base, "targets", None) is not None:
        images = torch.as_tensor(np.asarray(base.data))
        images = images[:, None] if images.ndim == 3 else images.permute(0, 3, 1, 2)  # MNIST HW, CIFAR HWC
        labels = torch.as_tensor(np.asarray(base.targets))
    else:  # generated sets (FakeData): through their own transform, once
        images, labels = map(torch.stack, zip(*[(x, torch.as_tensor(y)) for x, y in base]))
    if chosen is not None:
        images, labels = images[chosen], labels[chosen]
    return images.contiguous(), labels.long()
