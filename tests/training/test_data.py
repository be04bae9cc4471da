"""Data sets: digits, and the real torchvision loaders on small files written in their on-disk formats
(MNIST's are refused: only its original files are read; see tests/data/)."""
import pickle

import numpy as np
import pytest
import torch

from ieskips.data import load_dataset, subset
from ieskips.errors import ConfigError

pytestmark = pytest.mark.unit


def test_digits_split_and_range():
    train, test = load_dataset("digits", True), load_dataset("digits", False)
    assert (len(train), len(test)) == (1437, 360)
    image, label = train[0]
    assert image.shape == (1, 8, 8) and 0 <= image.min() and image.max() <= 1 and 0 <= label < 10


def test_subsets_are_deterministic_given_the_seed():
    data = load_dataset("digits", True)
    a, b, c = subset(data, 50, 1), subset(data, 50, 1), subset(data, 50, 2)
    assert a.indices == b.indices != c.indices


@pytest.mark.parametrize("name", ["mnist", "cifar10", "cifar100"])
def test_missing_files_give_a_clear_error(name, tmp_path):
    with pytest.raises(ConfigError, match=f"{name} not found under .*download"):
        load_dataset(name, True, root=tmp_path)


def write_idx(path, array):
    dims = array.shape
    header = bytes([0, 0, 8, len(dims)]) + b"".join(int(d).to_bytes(4, "big") for d in dims)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_mnist_files_that_are_not_the_originals_are_refused_before_reading(tmp_path):
    # (the real files through this loader: tests/data/test_mnist_real.py)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("t10k", 5)):
        write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, (n,)))
    with pytest.raises(ConfigError, match="train-images-idx3-ubyte has 9,424 bytes, not 47,040,016: it is damaged "
                                          "or not MNIST's original; move it away, then run `ieskips data fetch"):
        load_dataset("mnist", True, root=tmp_path)


@pytest.mark.parametrize("name, folder, files, key, classes", [
    ("cifar10", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"],
     "labels", 10),
    ("cifar100", "cifar-100-python", ["train", "test"], "fine_labels", 100),
])
def test_cifar_loaders_read_pickled_batches(tmp_path, name, folder, files, key, classes):
    base = tmp_path / folder
    base.mkdir()
    rng = np.random.default_rng(0)
    for file in files:
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), key: rng.integers(0, classes, 4).tolist()}
        (base / file).write_bytes(pickle.dumps(batch))
    meta = {"label_names": [str(i) for i in range(10)]} if classes == 10 else {"fine_label_names": [str(i) for i in range(100)]}
    (base / ("batches.meta" if classes == 10 else "meta")).write_bytes(pickle.dumps(meta))
    train = load_dataset(name, True, root=tmp_path)
    test = load_dataset(name, False, root=tmp_path, augment=False)
    assert len(train) == 4 * (len(files) - 1) and len(test) == 4
    image, label = test[0]
    assert image.shape == (3, 32, 32) and isinstance(label, int)
    flat = pickle.loads((base / files[-1]).read_bytes())["data"][0]
    expected = torch.tensor(flat.reshape(3, 32, 32), dtype=torch.float32) / 255
    torch.testing.assert_close(image, expected)
