"""The audit flags a gradient-masked model and passes an honest one; evaluate() aggregates right."""
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from ieskips.attacks import FGSM, PGD
from ieskips.audit import audit
from ieskips.evaluation import evaluate
from tests.attacks.tiny_ie import Quantised

pytestmark = pytest.mark.unit


def loader(x, y):
    return DataLoader(TensorDataset(x, y), batch_size=20)


KW = {"eps": 0.1, "steps": (5, 10, 20), "restarts": 3, "square_queries": 300, "progress": False}


def test_audit_passes_an_honest_model(linear_problem):
    model, x, y = linear_problem
    report = audit(model, loader(x, y), **KW)
    assert report.flagged == [], report.lines()
    assert report.accuracies["credible_robust_acc"] <= report.accuracies["robust_acc/pgd20"]


def test_audit_flags_a_gradient_masked_model(linear_problem):
    inner, x, y = linear_problem
    model = Quantised(inner)
    with torch.no_grad():
        y = model(x).argmax(1)
    report = audit(model, loader(x, y), **KW)
    flagged = {c.name for c in report.flagged}
    assert "square_not_better" in flagged, report.lines()
    assert report.accuracies["credible_robust_acc"] < report.accuracies["robust_acc/pgd20"]


def test_audit_of_an_ie_model_attacks_both_gradient_modes(linear_problem):
    from ieskips.models import build_model

    model = build_model("preact_resnet18", in_channels=1, width=2, ie_steps=1)
    x, y = torch.rand(8, 1, 16, 16), torch.randint(0, 10, (8,))
    report = audit(model, loader(x, y), eps=8 / 255, steps=(1, 2), restarts=2, square_queries=10, progress=False)
    names = {c.name: c for c in report.checks}
    assert names["unrolled_gradients"].passed is not None and names["transfer_weaker"].passed is not None
    assert "robust_acc/pgd1_unrolled" in report.accuracies


def test_evaluate_worst_case_is_per_example(linear_problem):
    model, x, y = linear_problem
    result = evaluate(model, loader(x, y), {"fgsm": FGSM(0.01), "pgd": PGD(0.01, 0.002, 10)}, progress=False)
    assert result["natural_acc"] == 1.0
    assert result["robust_acc/worst"] <= min(result["robust_acc/fgsm"], result["robust_acc/pgd"])
    assert 0 < result["robust_acc/pgd"] < 1
