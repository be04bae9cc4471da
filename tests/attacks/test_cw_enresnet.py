"""``CWL2(protocol="enresnet")`` against the EnResNet evaluation script's C&W loop, run line for line.

The reference is github.com/BaoWangMath/EnResNet @edc4fae, ResNet20/Attack_PGD_EnResNet_5_20.py
l.393-483 (the WRN-34-10 script, l.318-409, is the same loop), per image as there; ``.cuda()`` calls
are dropped (on the CPU they change nothing but the copy), the data are float64 so that the run is exact
(dtypes match, so ``torch.DoubleTensor(x_Test)`` shares the array's memory exactly as the script's
float32 ``torch.FloatTensor(x_Test)`` does).
"""
import numpy as np
import pytest
import torch
from torch.autograd import Variable

from ieskips.attacks import CWL2
from ieskips.models import build_model

pytestmark = pytest.mark.unit


def script(net, x1, epsilon, cwl2_learning_rate=0.0006, max_iter=50, lambdaf=10.0, kappa=0.0):
    """One image through the script's C&W branch; returns its ``x_adversarial`` and, for the test,
    the last iterate and the best one."""
    x_Test = x1.numpy()
    x = torch.tensor(x_Test.reshape(1, *x_Test.shape[1:]))  # torch.cuda.FloatTensor(...): a copy
    pred_tmp = net(x)
    y_pred = np.argmax(pred_tmp.data.numpy())
    input = torch.DoubleTensor(x_Test.reshape(1, *x_Test.shape[1:]))  # noqa: A001  (shares x_Test's memory)
    input_var = Variable(input)
    w = Variable(input, requires_grad=True)
    best_w = input.clone()
    best_loss = float("inf")
    optimizer = torch.optim.Adam([w], lr=cwl2_learning_rate)
    probs = net(input_var)
    probs_data = probs.data.clone()  # .cpu() of a CUDA tensor: a copy
    top1_idx = torch.max(probs_data, 1)[1]
    probs_data[0][top1_idx] = -1
    top2_idx = torch.max(probs_data, 1)[1]
    argmax = top1_idx[0]
    if argmax == y_pred:
        argmax = top2_idx[0]
    for i in range(0, max_iter):
        if i > 0:
            w.grad.data.fill_(0)
        net.zero_grad()
        optimizer.zero_grad()
        loss = torch.pow(w - input_var, 2).sum()
        w_data = w.data
        w_in = Variable(w_data, requires_grad=True)
        output = net.forward(w_in)
        loss += lambdaf * torch.clamp(output[0][y_pred] - output[0][argmax] + kappa, min=0)
        loss.backward()
        w.grad.data.add_(w_in.grad.data)
        optimizer.step()
        total_loss = loss.item()
        if total_loss < best_loss:
            best_loss = total_loss
            best_w = w.data.clone()
    x_adversarial = best_w
    noise_tmp = x_adversarial.numpy() - x_Test
    x_adversarial = x_Test + epsilon * noise_tmp
    return torch.from_numpy(np.array(x_adversarial)), w.detach().clone(), best_w


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = build_model("preact_resnet18", in_channels=3, width=2, num_classes=10, ie_steps=1,
                        ie_step_size=0.1).double().eval()
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 0.8 + 0.1
    return model, images


@pytest.mark.parametrize("epsilon", [0.031, 0.003])
def test_enresnet_protocol_equals_the_script(setup, epsilon):
    model, images = setup
    theirs = torch.cat([script(model, images[i:i + 1].clone(), epsilon)[0] for i in range(len(images))])
    labels = torch.zeros(len(images), dtype=torch.long)  # unused by this protocol: it targets the prediction
    ours = CWL2(protocol="enresnet", rescale=epsilon)(model, images, labels)
    torch.testing.assert_close(ours, theirs.clamp(0, 1), rtol=0, atol=1e-12)


def test_the_scripts_rescaling_shrinks_nothing(setup):
    """Its x_Test is the optimised buffer: the result is (1 - eps) w_last + eps w_best, not x + eps (w - x)."""
    model, images = setup
    x = images[:1].clone()
    adv, last, best = script(model, x.clone(), 0.031)
    torch.testing.assert_close(adv, (1 - 0.031) * last + 0.031 * best, rtol=0, atol=1e-12)
    moved = (adv - x).abs().max().item()
    shrunk = 0.031 * 50 * 0.0006  # the most a truly rescaled perturbation could move a pixel (Adam: ~lr a step)
    assert moved > 0.9 * (last - x).abs().max().item() and moved > 3 * shrunk
