"""Per-example results: compact files, composition across evaluations, the test set's identity."""
import pytest
import torch

from ieskips.data import scored_examples
from ieskips.evaluation import ExampleResults, accuracies

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
