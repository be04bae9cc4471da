"""Per-example results: compact files, composition across evaluations, the test set's identity."""
import pytest
import torch

from ieskips.data import scored_examples
from ieskips.evaluation import ExampleResults, accuracies, evaluate_examples, fixed_draw

pytestmark = pytest.mark.unit


def results(masks, identity="digits-test-360-x", indices=None):
    n = len(next(iter(masks.values())))
    return ExampleResults(identity, torch.arange(n) if indices is None else indices,
                          {k: torch.tensor(v, dtype=torch.bool) for k, v in masks.items()})


def test_files_round_trip_one_label_each(tmp_path):
    first = results({"natural": [1, 1, 1, 0], "fgsm": [1, 0, 1, 0]}, indices=torch.tensor([7, 3, 11, 2]))
    paths = []
    for label in first.masks:
        paths.append(tmp_path / f"{label}.npz")
        paths[-1].write_bytes(first.to_bytes(label))
    back = ExampleResults.from_files(paths)
    assert back.identity == first.identity and torch.equal(back.indices, first.indices)
    assert all(torch.equal(back.masks[k], first.masks[k]) for k in first.masks)
    assert ExampleResults.from_files([]) is None


def test_adding_an_attack_recomputes_the_worst_case_per_example_and_it_never_rises():
    before = results({"natural": [1, 1, 1, 1], "fgsm": [1, 1, 0, 1], "pgd": [1, 0, 1, 1]})
    after = before.merge(results({"natural": [1, 1, 1, 1], "square": [0, 1, 1, 1]}))
    assert before.accuracies()["robust_acc/worst"] == 0.5
    assert after.accuracies()["robust_acc/worst"] == 0.25  # per example; the min of accuracies would say 0.75
    assert after.accuracies()["robust_acc/square"] == 0.75


def test_a_label_evaluated_twice_keeps_only_examples_both_runs_left_right():
    merged = results({"pgd": [1, 1, 0]}).merge(results({"pgd": [1, 0, 1]}))
    assert merged.masks["pgd"].tolist() == [True, False, False]


@pytest.mark.parametrize("other", [results({"pgd": [1, 1, 1]}, identity="mnist-test-3-y"),
                                   results({"pgd": [1, 1, 1]}, indices=torch.tensor([0, 1, 5]))])
def test_results_of_other_examples_do_not_combine(other):
    with pytest.raises(ValueError, match="cannot be combined"):
        results({"pgd": [1, 1, 1]}).merge(other)


def test_accuracies_count_clean_mistakes_as_not_robust():
    assert accuracies({"natural": torch.tensor([True, False]), "a": torch.tensor([True, False])})["robust_acc/a"] == 0.5


def test_scored_examples_are_the_same_draw_every_time_and_named_by_content():
    a, b = scored_examples("digits", 64), scored_examples("digits", 64)
    assert torch.equal(a.indices, b.indices) and len(a.indices) == 64 == len(a.dataset)
    assert a.identity == b.identity and a.identity.startswith("digits-test-360-")
    assert torch.equal(scored_examples("digits", None).indices, torch.arange(360))
    assert scored_examples("fake", 8).identity != a.identity


def test_an_attack_on_a_fixed_subset_covers_those_examples_and_the_worst_case_is_over_them(tmp_path):
    full = results({"natural": [1, 1, 1, 1, 0, 1], "fgsm": [1, 0, 1, 1, 0, 1]}, indices=torch.arange(10, 16))
    chosen = fixed_draw(6, 3)
    assert int(chosen.sum()) == 3 and torch.equal(fixed_draw(6, 3), chosen) and bool((~chosen | fixed_draw(6, 5)).all())
    part = ExampleResults(full.identity, full.indices, {"square": torch.tensor([False, True, True])}, {"square": chosen})
    merged = full.merge(part)
    acc = merged.accuracies()
    assert acc["robust_acc/square"] == pytest.approx(2 / 3) and acc["robust_acc/fgsm"] == pytest.approx(4 / 6)
    both = full.masks["fgsm"][chosen] & torch.tensor([False, True, True])
    assert acc["robust_acc/worst"] == pytest.approx(both.float().mean().item())
    paths = []
    for label in merged.masks:  # stored one file per label, read back with the coverage
        paths.append(tmp_path / f"{label}.npz")
        paths[-1].write_bytes(merged.to_bytes(label))
    back = ExampleResults.from_files(paths)
    assert torch.equal(back.covered["square"], chosen) and back.accuracies() == acc
    with pytest.raises(ValueError, match="different examples"):
        merged.merge(ExampleResults(full.identity, full.indices, {"square": torch.ones(4, dtype=torch.bool)},
                                    {"square": fixed_draw(6, 4)}))


def test_evaluate_examples_runs_a_subset_attack_on_its_draw_only():
    from ieskips.attacks import build_attack

    calls = []

    class Counting(torch.nn.Module):
        def forward(self, x):
            return torch.stack([x.flatten(1).sum(1), -x.flatten(1).sum(1)], 1)

    attack = build_attack({"name": "fgsm", "eps": 0.1, "subset": 3})
    real = attack.perturb
    attack.perturb = lambda m, x, y: (calls.append(len(x)), real(m, x, y))[1]
    loader = [(torch.rand(4, 1, 2, 2), torch.zeros(4, dtype=torch.long)) for _ in range(2)]
    out = evaluate_examples(Counting(), loader, {"fgsm": attack}, identity="x", indices=torch.arange(8))
    assert sum(calls) == 3 and len(out.masks["fgsm"]) == 3 and int(out.covered["fgsm"].sum()) == 3
    with pytest.raises(Exception, match="subset"):
        build_attack({"name": "fgsm", "eps": 0.1, "subset": 0})
