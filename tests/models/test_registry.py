"""Every registered model: shapes, finiteness, gradients, no_grad, vanilla equivalence, bad input."""
import pytest
import torch

from ieskips.errors import ConfigError
from ieskips.models import build_model, list_models
from ieskips.models.ie_skip import IESkip
from ieskips.models.resnet import preact_resnet

pytestmark = pytest.mark.unit

# Tiny widths keep the whole registry fast on 2 CPU cores.
SMALL = {"preact_resnet18": 4, "preact_resnet34": 2, "preact_resnet50": 4, "sw_preact_resnet58": 2,
         "wide_resnet34_10": 4}
INPUTS = {"mnist": (1, 28, 28), "cifar": (3, 32, 32)}


def small(name, **kw):
    return build_model(name, width=SMALL[name], **kw)


def test_registry_lists_the_paper_models():
    assert list_models() == sorted(SMALL)


@pytest.mark.parametrize("data", INPUTS)
@pytest.mark.parametrize("name", sorted(SMALL))
def test_shape_finite_gradients_and_no_grad(name, data):
    c, h, w = INPUTS[data]
    model = small(name, in_channels=c, num_classes=7, ie_steps=1, ie_step_size=0.05)
    x = torch.rand(2, c, h, w)
    out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    assert all(p.grad.abs().sum() > 0 for p in model.parameters())
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), out.detach(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_every_same_shape_block_is_an_ie_skip(name):
    model = small(name, ie_steps=2)
    ie = [m for m in model.modules() if isinstance(m, IESkip)]
    assert ie and all(m.steps == 2 for m in ie)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_ie_steps_zero_equals_vanilla_and_parameters_match_for_every_k(name):
    torch.manual_seed(3)
    vanilla = small(name)
    x = torch.rand(2, 3, 32, 32)
    for k in (0, 1, 3):
        model = small(name, ie_steps=k)
        model.load_state_dict(vanilla.state_dict())
        assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in vanilla.parameters())
        if k == 0:
            assert torch.equal(model(x), vanilla(x))
        else:
            assert not torch.allclose(model(x), vanilla(x))


def test_ie_resnet18_counts_five_ie_blocks_and_three_projections():
    model = build_model("preact_resnet18", ie_steps=1)
    assert sum(isinstance(m, IESkip) for m in model.modules()) == 5


def test_swresnet_applies_shared_blocks_twice():
    sw, plain = build_model("sw_preact_resnet58", width=2), build_model("preact_resnet34", width=2)
    sw.load_state_dict(plain.state_dict())  # same parameters, different computation
    x = torch.rand(2, 3, 32, 32)
    assert not torch.allclose(sw(x), plain(x))


@pytest.mark.parametrize("name", ["preact_resnet18", "wide_resnet34_10"])
def test_group_norm_sample_alone_equals_sample_in_batch(name):
    model = small(name, ie_steps=2, norm="group")
    x = torch.rand(5, 3, 32, 32)
    torch.testing.assert_close(model(x[2:3]), model(x)[2:3], rtol=1e-4, atol=1e-5)


def test_batch_norm_model_trains_and_evaluates():
    model = small("preact_resnet18", ie_steps=1, norm="batch")
    x = torch.rand(4, 3, 32, 32)
    model(x).sum().backward()
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()


@pytest.mark.parametrize("call, words", [
    (lambda: build_model("resnet18"), ["unknown model", "preact_resnet18"]),
    (lambda: preact_resnet(20), ["unknown depth", "18", "34", "50"]),
    (lambda: build_model("preact_resnet18", ie_steps=-1), ["ie_steps", ">= 0"]),
    (lambda: build_model("preact_resnet18", ie_step_size=-0.5), ["ie_step_size"]),
    (lambda: build_model("preact_resnet18", inner_grad="full"), ["inner_grad", "detached", "unrolled"]),
    (lambda: build_model("preact_resnet18", norm="layer"), ["norm", "batch", "group"]),
    (lambda: build_model("preact_resnet18", width=0), ["width"]),
])
def test_bad_input_names_the_valid_choices(call, words):
    with pytest.raises(ConfigError) as info:
        call()
    assert all(w in str(info.value) for w in words)
    assert "\n" not in str(info.value)
