import pytest
import torch

from tests.device import DEVICE


def pytest_configure(config):
    if DEVICE.type == "cuda" and not torch.cuda.is_available():  # a GPU run on no GPU must not pass on the CPU
        raise pytest.UsageError(f"IESKIPS_TEST_DEVICE={DEVICE} but torch sees no CUDA device")


def pytest_report_header(config):
    return f"ieskips test device: {DEVICE} (IESKIPS_TEST_DEVICE)"


@pytest.fixture(scope="session")
def device() -> torch.device:
    """Where the tests with a CUDA path put their models and tensors (tests/device.py)."""
    return DEVICE


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield
