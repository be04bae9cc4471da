"""The device-resident loader: every example once per epoch in a seeded order, crops and flips as
torchvision's RandomCrop(padding=4) and RandomHorizontalFlip, exact resume (the trainer's resume test
runs on both loaders). On ``IESKIPS_TEST_DEVICE`` (tests/device.py): a GPU where one is lent."""
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ieskips.data import load_dataset, make_loader, subset
from ieskips.device_loader import PAD, DeviceLoader, crop_flip, raw_tensors

pytestmark = pytest.mark.unit


def batches(loader):
    return [(x.to("cpu", copy=True), y.to("cpu", copy=True)) for x, y in loader]


def test_each_epoch_gives_every_example_once_in_a_new_order(device):
    data = subset(load_dataset("digits", True), 300, 1)
    loader = make_loader(data, 64, shuffle=True, seed=3, device=device)
    first, second = batches(loader), batches(loader)
    expected = torch.sort(load_dataset("digits", True).tensors[1][data.indices]).values
    for epoch in (first, second):
        assert len(epoch) == 5 and torch.equal(torch.sort(torch.cat([y for _, y in epoch])).values, expected)
    assert not torch.equal(first[0][1], second[0][1])
    again = batches(make_loader(data, 64, shuffle=True, seed=3, device=device))  # seeded: the same order
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(first, again))


def test_crop_and_flip_are_windows_of_the_zero_padded_image(device):
    images = torch.rand(6, 3, 8, 8)
    offsets = torch.tensor([[0, 0], [8, 8], [4, 4], [1, 7], [3, 0], [8, 2]])
    flips = torch.tensor([False, True, False, True, False, True])
    out = crop_flip(images.to(device), offsets.to(device), flips.to(device)).cpu()
    padded = F.pad(images, (PAD,) * 4)
    for i, ((r, c), flip) in enumerate(zip(offsets.tolist(), flips.tolist())):
        window = padded[i, :, r:r + 8, c:c + 8]
        assert torch.equal(out[i], window.flip(-1) if flip else window)
    assert torch.equal(out[2], images[2])  # the centred window, unflipped, is the image


def test_augmentation_draws_every_offset_and_flips_about_half(device):
    images = torch.arange(1, 9, dtype=torch.uint8).repeat(900, 3, 8, 1)  # column j holds j + 1; padding is 0
    loader = DeviceLoader(images, torch.zeros(900, dtype=torch.long), 900, shuffle=False, seed=0, augment=True,
                          device=device)
    (out, _), = batches(loader)
    assert out.shape == (900, 3, 8, 8) and out.dtype == torch.float32 and out.max() <= 1
    offsets, flipped = set(), 0
    for row in (out[:, 0, 4, :] * 255).round().long():  # a middle row: never padding
        inside = row[row > 0]
        if bool((inside.diff() < 0).all()):
            flipped += 1
        else:
            first = int((row > 0).nonzero()[0])
            offsets.add(int(row[first]) + PAD - 1 - first)  # the window's left edge in the padded image
    assert offsets == set(range(2 * PAD + 1)) and 0.4 < flipped / 900 < 0.6


def test_uint8_sets_stay_uint8_on_the_device_and_scale_to_unit_range(device):
    class Stored(torch.utils.data.Dataset):  # the shape torchvision's CIFAR keeps in memory
        data = np.random.default_rng(0).integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)
        targets = list(range(10))

        def __len__(self):
            return 10

    images, labels = raw_tensors(subset(Stored(), 5, 0))
    assert images.dtype == torch.uint8 and images.shape == (5, 3, 4, 4) and labels.dtype == torch.long
    (x, y), = batches(DeviceLoader(images, labels, 8, shuffle=False, seed=0, device=device))
    chosen = subset(Stored(), 5, 0).indices
    assert torch.allclose(x, torch.as_tensor(Stored.data[chosen]).permute(0, 3, 1, 2).float() / 255)


def test_a_saved_generator_state_resumes_the_same_epoch(device):
    loader = DeviceLoader(torch.rand(50, 1, 8, 8), torch.arange(50), 16, shuffle=True, seed=5, augment=True,
                          device=device)
    batches(loader)
    state = pickle.loads(pickle.dumps(loader.generator.get_state()))
    expected = batches(loader)
    loader.generator.set_state(state)
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(batches(loader), expected))


def test_rotation_turns_about_the_centre_by_angles_within_the_range(device):
    from ieskips.device_loader import rotated

    images = torch.zeros(3, 1, 9, 9)
    images[:, 0, 4, 6] = 1  # a dot two pixels right of the centre
    out = rotated(images.to(device), torch.tensor([0.0, 90.0, 180.0], device=device)).cpu()
    assert torch.equal(out[0], images[0])
    for turned, (row, col) in zip(out[1:], [(2, 4), (4, 2)]):  # a quarter turn moves it up, a half turn left
        assert turned[0].nonzero().tolist() in ([[row, col]], [[8 - row, col]])
    loader = DeviceLoader(torch.ones(400, 1, 8, 8), torch.zeros(400, dtype=torch.long), 400, shuffle=False, seed=0,
                          augment=True, rotate=15, device=device)
    (out, _), = batches(loader)
    corners = out[:, 0, [0, 0, -1, -1], [0, -1, 0, -1]]  # a rotated all-ones image leaves zero corners
    assert 0 < (corners == 0).any(1).float().mean() < 1  # most angles clip a corner, a few (near 0) do not
