"""The device of the tests that have a CUDA path: ``IESKIPS_TEST_DEVICE`` (``cpu`` unless set), so the same
tests run on a GPU where one is lent (``IESKIPS_TEST_DEVICE=cuda``; benchmarks/gpu_check.py sets it).
A module constant, not only a fixture, because configs built at import time (trainer tests) name it too."""
import os

import torch

DEVICE = torch.device(os.environ.get("IESKIPS_TEST_DEVICE", "cpu"))
