"""The real MNIST files, where ``make test`` fetched them (``ieskips.data.default_root()``)."""
from pathlib import Path

import pytest

from ieskips.data import default_root, mnist
from ieskips.errors import ConfigError


@pytest.fixture(scope="session")
def real_root() -> Path:
    """The data root holding the verified original files. Missing: the test fails (never skips), saying
    how to get them, as ``make test`` does before pytest."""
    root = default_root()
    try:
        mnist.verify(root)
    except ConfigError as err:
        pytest.fail(f"real MNIST is needed here and {err} (`make test` fetches it first)")
    return root
