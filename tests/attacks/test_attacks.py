"""Invariants of every attack, cross-checks against independent implementations, bad input."""
import pytest
import torch

from ieskips.attacks import CWL2, FGSM, PGD, AutoAttack, Square, Transfer, build_attack, list_attacks
from ieskips.errors import ConfigError
from ieskips.models import IESkip, build_model, inner_grad_mode

pytestmark = pytest.mark.unit
EPS = 8 / 255


def make_attacks(source):
    return {
        "fgsm": FGSM(EPS),
        "pgd": PGD(EPS, 2 / 255, 3),
        "pgd_cw_restarts": PGD(EPS, 2 / 255, 2, restarts=2, loss="cw"),
        "pgd_unrolled": PGD(EPS, 2 / 255, 2, inner_grad="unrolled"),
        "cw_l2": CWL2(steps=5),
        "square": Square(EPS, queries=20),
        "transfer": Transfer(source, FGSM(16 / 255)),
        "autoattack": AutoAttack(EPS),
    }


def test_every_registered_attack_is_covered():
    from .test_adaptive import NEW  # the adaptive attacks' invariants are tested there

    covered = {n.split("_")[0] if n.startswith("pgd") else n for n in make_attacks(None)}
    assert set(list_attacks()) <= covered | {spec["name"] for spec in NEW.values()}


@pytest.mark.parametrize("name", list(make_attacks(None)))
@pytest.mark.parametrize("training", [True, False])
def test_invariants(name, training, ie_model, batch, device):
    images, labels = batch
    attack = make_attacks(build_model("preact_resnet18", in_channels=1, width=2).to(device))[name]
    ie_model.train(training)
    before = {k: v.clone() for k, v in ie_model.state_dict().items()}
    adv = attack(ie_model, images, labels)
    assert adv.shape == images.shape and not adv.requires_grad
    assert adv.min() >= 0 and adv.max() <= 1
    if name not in ("cw_l2", "transfer"):
        assert (adv - images).abs().max() <= EPS + 1e-6
    assert ie_model.training is training
    assert all(p.grad is None for p in ie_model.parameters())
    assert all(torch.equal(before[k], v) for k, v in ie_model.state_dict().items())
    assert all(m.inner_grad == "detached" for m in ie_model.modules() if isinstance(m, IESkip))


def test_attacks_lower_accuracy_of_a_linear_model(linear_problem):
    model, x, y = linear_problem
    for attack in (FGSM(0.1), PGD(0.1, 0.02, 10), Square(0.1, queries=200)):
        assert (model(attack(model, x, y)).argmax(1) == y).float().mean() < 0.9


def test_fgsm_equals_one_pgd_step_without_random_start(ie_model, batch):
    images, labels = batch
    torch.testing.assert_close(FGSM(EPS)(ie_model, images, labels),
                               PGD(EPS, alpha=EPS, steps=1, random_start=False)(ie_model, images, labels))


def test_pgd_matches_torchattacks(ie_model, batch):
    torchattacks = pytest.importorskip("torchattacks")
    images, labels = batch
    ie_model.eval()
    ours = PGD(EPS, 2 / 255, 10, random_start=False)(ie_model, images, labels)
    theirs = torchattacks.PGD(ie_model, eps=EPS, alpha=2 / 255, steps=10, random_start=False)(images, labels)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_restarts_keep_the_worst_case(linear_problem):
    model, x, y = linear_problem
    torch.manual_seed(0)
    single = PGD(0.05, 0.01, 3)(model, x, y)
    torch.manual_seed(0)
    several = PGD(0.05, 0.01, 3, restarts=4)(model, x, y)
    loss = lambda adv: torch.nn.functional.cross_entropy(model(adv), y, reduction="none")  # noqa: E731
    assert (loss(several) >= loss(single) - 1e-6).all()


def test_cw_finds_the_analytic_minimum_norm_perturbation_of_a_linear_model(linear_problem):
    model, x, y = linear_problem
    with torch.no_grad():
        far = model(x).topk(2, 1).values.diff(dim=1).abs().squeeze(1).topk(5).indices
    x, y = x[far], y[far]  # the points farthest from the boundary, so Adam's jitter is small beside it
    attack = CWL2(c=10, lr=0.002, steps=1000)
    adv = attack(model, x, y)
    with torch.no_grad():
        logits = model(x)
        target = logits.scatter(1, y[:, None], float("-inf")).argmax(1)
        direction = model.weight[target] - model.weight[y]
        margin = logits.gather(1, y[:, None]).squeeze(1) - logits.gather(1, target[:, None]).squeeze(1)
        analytic = margin / direction.norm(dim=1)  # distance to the hyperplane z_y = z_t
    found = (adv - x).flatten(1).norm(dim=1)
    assert (model(adv).argmax(1) != y).all()
    torch.testing.assert_close(found, analytic, rtol=0.05, atol=0)
    cosine = torch.nn.functional.cosine_similarity((adv - x).flatten(1), direction, dim=1)
    assert (cosine > 0.99).all()


def test_inner_grad_mode_switches_gradients_not_values(ie_model, batch):
    images, _ = batch
    x = images.clone().requires_grad_()
    out = ie_model(x)
    (g_detached,) = torch.autograd.grad(out.sum(), x)
    with inner_grad_mode(ie_model, "unrolled"):
        out_u = ie_model(x)
        (g_unrolled,) = torch.autograd.grad(out_u.sum(), x)
    torch.testing.assert_close(out_u, out, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(g_unrolled, g_detached)
    assert all(m.inner_grad == "detached" for m in ie_model.modules() if isinstance(m, IESkip))


def test_build_attack_from_a_dict():
    attack = build_attack({"name": "pgd", "eps": 0.0314, "alpha": 0.0039, "steps": 20})
    assert isinstance(attack, PGD) and attack.steps == 20 and attack.eps == 0.0314


@pytest.mark.parametrize("spec, words", [
    ({"name": "deepfool"}, ["unknown attack", "pgd"]),
    ({"name": "pgd", "eps": 1.5}, ["eps", "<= 1"]),
    ({"name": "pgd", "eps": -0.1}, ["eps", ">= 0"]),
    ({"name": "pgd", "steps": 0}, ["steps", "> 0"]),
    ({"name": "cw_l2", "steps": -3}, ["steps"]),
    ({"name": "pgd", "stepz": 3}, ["unknown key", "stepz", "steps"]),
    ({"name": "pgd", "loss": "dlr"}, ["loss", "ce", "cw"]),
    ({"name": "pgd", "inner_grad": "full"}, ["inner_grad", "unrolled"]),
    ({"name": "transfer"}, ["source model"]),
])
def test_bad_specs_give_a_clear_error(spec, words):
    with pytest.raises(ConfigError) as info:
        build_attack(spec)
    assert all(w in str(info.value) for w in words), str(info.value)


def test_inputs_outside_unit_range_are_refused(ie_model, batch):
    images, labels = batch
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        PGD()(ie_model, images * 2 - 0.5, labels)
