"""Data sets: digits (embedded default), mnist, cifar10, cifar100 (torchvision, from disk), fake.

Images come out as float tensors in [0, 1]; the model normalises them itself (unless ``input_norm: false``).
Files live under one root, ``default_root()`` unless a trial's ``data_dir`` says otherwise; MNIST's
files are verified against their known digests before they are read (``mnist.py``: fetch and verify).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from ..errors import ConfigError, check_choice
from . import mnist


@dataclass(frozen=True)
class DataInfo:
    num_classes: int
    in_channels: int
    image_size: int


INFO = {
    "digits": DataInfo(10, 1, 8),
    "mnist": DataInfo(10, 1, 28),
    "cifar10": DataInfo(10, 3, 32),
    "cifar100": DataInfo(100, 3, 32),
    "fake": DataInfo(10, 3, 32),
}
DATASETS = tuple(INFO)
HOW_TO_GET = ("run once with download: true on a machine with internet (or copy the torchvision "
              "files there)")
DATA_ENV = "IESKIPS_DATA"


def default_root() -> Path:
    """The one default place for data files: ``$IESKIPS_DATA`` if set, else ``~/.cache/ieskips/data``
    (outside any checkout, shared by every run of this user); a trial's ``data_dir: null`` means it."""
    return Path(os.environ.get(DATA_ENV) or Path.home() / ".cache" / "ieskips" / "data").expanduser()


def resolve_root(root: str | Path | None) -> Path:
    return default_root() if root is None else Path(root).expanduser()


def _digits(train: bool) -> Dataset:
    """scikit-learn's 1797 handwritten 8x8 digits; a fixed 80/20 split, independent of any seed."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    cut = int(0.8 * len(labels))
    idx = order[:cut] if train else order[cut:]
    return TensorDataset(images[idx], labels[idx])


def _torchvision(name: str, root: Path, train: bool, download: bool, augment: bool, rotate: float = 0.0) -> Dataset:
    from torchvision import transforms

    steps = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if (
        augment and train and name.startswith("cifar")) else []
    if steps and rotate:  # after crop and flip, as the authors' utils.py:76-83 (PIL, nearest, fill 0)
        steps.append(transforms.RandomRotation(rotate))
    transform = transforms.Compose(steps + [transforms.ToTensor()])
    if name == "mnist":  # the known files, checked before training can start on anything else
        if download:
            mnist.fetch(root, progress=False)
        mnist.verify(root)
        download = False  # fetched and verified above, by the routes of mnist.fetch
    cls = {"mnist": _MNIST, "cifar10": _CIFAR10, "cifar100": _CIFAR100}[name]
    try:
        return cls(str(root), train=train, download=download, transform=transform)
    except RuntimeError as err:  # torchvision: "Dataset not found ..."
        raise ConfigError(f"{name} not found under {root.resolve()}; {HOW_TO_GET}") from err


def _without_md5(cls):
    """The same data set, checked for the presence of its files but not their MD5 sums: real files
    load as before, start-up skips hashing 170 MB, and tests can write small files in the format."""
    return type(cls.__name__, (cls,), {
        "train_list": [(name, None) for name, _ in cls.train_list],
        "test_list": [(name, None) for name, _ in cls.test_list],
        "meta": {**cls.meta, "md5": None},
    })


def _cifar_classes():
    from torchvision import datasets

    return _without_md5(datasets.CIFAR10), _without_md5(datasets.CIFAR100)


_CIFAR10, _CIFAR100 = _cifar_classes()


def _mnist_class():
    """torchvision's MNIST reading only the raw files ``mnist.verify`` checked: never an older
    ``processed/*.pt`` cache beside them, which it would otherwise prefer."""
    from torchvision import datasets

    return type("MNIST", (datasets.MNIST,), {"_check_legacy_exist": lambda self: False})


_MNIST = _mnist_class()


def _fake(train: bool, size: int = 512) -> Dataset:
    from torchvision import datasets, transforms

    return datasets.FakeData(size, (3, 32, 32), 10, transforms.ToTensor(), random_offset=0 if train else size)


def load_dataset(name: str, train: bool, *, root: str | Path | None = None, download: bool = False,
                 augment: bool = True, rotate: float = 0.0) -> Dataset:
    """``root``: None = ``default_root()``. ``rotate``: with ``augment`` on a CIFAR training set,
    RandomRotation(rotate) after crop and flip."""
    check_choice("dataset", name, DATASETS)
    if name == "digits":
        return _digits(train)
    if name == "fake":
        return _fake(train)
    return _torchvision(name, resolve_root(root), train, download, augment, rotate)


def files_digest(name: str, train: bool, root: str | Path | None = None) -> str | None:
    """A split named by its files' digest, once they are verified (MNIST); None where this project
    knows no digests for the files (the other sets: name them by their content, ``identity``)."""
    if name != "mnist":
        return None
    mnist.verify(resolve_root(root))
    return mnist.digest(mnist.SPLITS["train" if train else "test"])


def subset(dataset: Dataset, size: int | None, seed: int) -> Dataset:
    """The first ``size`` examples of a seeded permutation (all of them when ``size`` is None). A subset
    of a ``Subset`` is one flat ``Subset`` of the underlying set (same examples, same order)."""
    if size is None or size >= len(dataset):
        return dataset
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:size].tolist()
    if isinstance(dataset, Subset):
        return Subset(dataset.dataset, [dataset.indices[i] for i in order])
    return Subset(dataset, order)


VALIDATION_SEED = 0  # the held-out split is the same draw for every trial (like the scored test subset)


def hold_out(train: Dataset, plain: Dataset, size: int) -> tuple[Dataset, Dataset]:
    """Split a training set into ``(rest, validation)``: ``size`` examples of a fixed permutation
    (``VALIDATION_SEED``, whatever the trial's seed) held out, taken from ``plain`` (the same training set
    without augmentation), and the rest from ``train`` (with its training transform). Both are flat
    ``Subset``s; the validation split never meets the test set."""
    if len(plain) != len(train) or not 0 < size < len(train):
        raise ConfigError(f"val_size must lie between 1 and {len(train) - 1} (the training set has "
                          f"{len(train)} examples), got {size}")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(VALIDATION_SEED)).tolist()
    return Subset(train, order[size:]), Subset(plain, order[:size])


@dataclass(frozen=True)
class ScoredExamples:
    """The test examples a model is scored on, named so that results from different runs and times
    compose: per example, its index in the whole test set, and the whole set's identity."""

    dataset: Dataset  # the examples (a seeded subset of the test set, or all of it)
    indices: torch.Tensor  # int64: each example's index in the whole test set, in loader order
    identity: str  # "<name>-test-<size>-<content hash>" of the whole test set


def scored_examples(name: str, size: int | None, *, root: str | Path | None = None,
                    download: bool = False) -> ScoredExamples:
    """The test set's seeded subset of ``size`` (all when None). The subset's seed is fixed (0), so every
    trial and every later evaluation of a sweep scores the same examples."""
    whole = load_dataset(name, False, root=root, download=download)
    chosen = subset(whole, size, 0)
    indices = torch.as_tensor(chosen.indices if isinstance(chosen, Subset) else range(len(whole)), dtype=torch.long)
    return ScoredExamples(chosen, indices, identity(name, whole))


def identity(name: str, dataset: Dataset) -> str:
    """Name, size and a hash of the content (images and labels where the set holds them in memory),
    so that per-example results are never combined across different data."""
    digest = hashlib.sha256()
    for array in _content(dataset):
        digest.update(np.ascontiguousarray(array).tobytes())
    return f"{name}-test-{len(dataset)}-{digest.hexdigest()[:16]}"


def _content(dataset: Dataset) -> tuple:
    if isinstance(dataset, TensorDataset):
        return tuple(t.numpy() for t in dataset.tensors)
    data, targets = getattr(dataset, "data", None), getattr(dataset, "targets", None)
    if data is not None and targets is not None:  # torchvision's MNIST and CIFAR keep both in memory
        return np.asarray(data), np.asarray(targets)
    return ()  # FakeData: generated from its size and offset, which the name and size cover


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int, num_workers: int = 0,
                device: torch.device | str | None = None, augment: bool = False, rotate: float = 0.0):
    """A loader whose shuffling follows its own seeded generator (reproducible, resumable): with a
    ``device``, the data set held there (``DeviceLoader``, which does the ``augment``-ation and the
    ``rotate``-ion itself);
    without, torchvision's DataLoader (augmentation, if any, is then the data set's transform)."""
    if device is not None:
        from ..device_loader import DeviceLoader

        return DeviceLoader.from_dataset(dataset, batch_size, shuffle=shuffle, seed=seed, augment=augment,
                                         rotate=rotate, device=device)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      num_workers=num_workers, drop_last=False)
