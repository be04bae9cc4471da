"""Every setting of the paper's sweep files says where it comes from (README, "The paper's tables and
figures"): the paper where it states one, else the authors' code, else the cited baseline's recipe, else
ours. The convention, enforced here:

- every key under ``base`` and ``grid``, and every ``eval_attacks`` entry, ends its line with a comment
  ``# paper: §...`` (the section that states it), ``# code: <file of the authors' repository>...``,
  ``# baseline: <TRADES | EnResNet | Madry> ...`` or ``# ours: <reason>``;
- the settings that decide training and the model are written out, not left to ``TrialConfig``'s
  defaults (no ``preset`` either); every ``TrialConfig`` field is classified below, so a new field fails
  here until someone decides whether a paper sweep must state it;
- the report's note names every such setting, not from the paper, that could move the numbers.
"""
import re
from pathlib import Path

import pytest
import yaml

from ieskips.config import TrialConfig

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
PAPER_SWEEPS = sorted([*REPO.glob("sweeps/table*.yaml"), *REPO.glob("sweeps/fig*.yaml")])

# Files of github.com/homles11/IE-Skips @93c2b3d (git ls-tree, without __pycache__).
AUTHORS_FILES = {"README.md", "attack_config.py", "attack_eval.py", "conf/global_settings.py", "dataset.py",
                 "lib/attack/attack_base.py", "lib/attack/pgd.py", "lib/base_model/wide_resnet.py",
                 "lib/training/config.py", "lib/training/train.py", "lib/utils/misc.py", "models/s2ResNet.py",
                 "models/sResNet.py", "models/sirResNet.py", "train.py", "utils.py"}
BASELINES = ("TRADES", "EnResNet", "Madry")
SOURCE = re.compile(r"#\s*(paper|code|baseline|ours):\s*(\S.*)$")

# Must be stated in every paper sweep (base or grid): what decides the model, the training and the attacks.
ALWAYS = {"dataset", "model", "width", "norm", "stem", "input_norm", "ie_steps", "ie_step_size", "inner_grad",
          "method", "epochs", "lr", "milestones", "lr_factor", "batch_size", "momentum", "weight_decay",
          "warmup_epochs", "augment", "rotate", "val_size", "eval_attacks", "seed"}
ADVERSARIAL = {"train_eps", "train_alpha", "train_steps"}  # fgsm / pgd / trades
CONDITIONAL = {"clean_loss_weight": ("fgsm", "pgd"), "trades_beta": ("trades",), **{k: ("fgsm", "pgd", "trades")
                                                                                     for k in ADVERSARIAL}}
SELECTION = {"select_after", "select_attack"}  # with val_size > 0
# Need not be stated: where and how a trial runs, what it monitors, subsets for smoke runs.
OPERATIONAL = {"data_dir", "download", "train_subset", "test_subset", "eval_subset", "monitor_attacks", "diagnostics",
               "diagnostics_examples", "device", "bf16", "channels_last", "checkpoint_every", "num_workers",
               "data_on_device", "paper_table"}
# Named in the report's note when they do not come from the paper.
NOTE_KEYS = {"norm", "stem", "input_norm", "ie_step_size", "clean_loss_weight", "warmup_epochs", "rotate",
             "epochs", "lr", "milestones", "lr_factor", "weight_decay", "train_eps", "train_alpha", "val_size"}


def sourced_lines(path: Path) -> tuple[dict, list[tuple[str, str]]]:
    """``{key: (tag, text)}`` for the keys under base and grid, and ``[(line, tag)]`` for list entries under
    them; tag None where a line has no source comment."""
    keys, entries, section = {}, [], None
    for line in path.read_text().splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            section = line.split(":")[0] if line.split(":")[0] in ("base", "grid") else None
            continue
        if section is None or not line.strip() or line.strip().startswith("#"):
            continue
        found = SOURCE.search(line)
        tag = (found.group(1), found.group(2)) if found else (None, "")
        key = re.match(r"^  ([A-Za-z_]\w*):(\s*(#.*)?$)?", line)
        if key:  # a key whose value is a block list below is sourced by its entries
            keys[key.group(1)] = ("entries", "") if key.group(2) is not None else tag
        elif re.match(r"^    - ", line):
            entries.append((line.strip(), tag))
    return keys, entries


def check_source(tag: str, text: str) -> str | None:
    """Why a source comment is not acceptable, or None."""
    if tag == "paper" and not re.search(r"§\d", text):
        return "a paper source names its section (§5.2)"
    if tag == "code" and (re.match(r"[\w/]+\.\w+", text) is None or re.match(r"[\w/]+\.\w+", text).group(0)
                          not in AUTHORS_FILES):
        return f"a code source starts with a file of the authors' repository ({', '.join(sorted(AUTHORS_FILES))})"
    if tag == "baseline" and not text.startswith(BASELINES):
        return f"a baseline source starts with the baseline's name ({', '.join(BASELINES)})"
    if tag == "ours" and len(text.split()) < 3:
        return "an 'ours' source gives a reason"
    return None


def test_there_are_paper_sweeps():
    assert len(PAPER_SWEEPS) == 10


def test_every_trial_config_field_is_classified():
    classified = ALWAYS | set(CONDITIONAL) | SELECTION | OPERATIONAL
    new = sorted(set(TrialConfig.model_fields) - classified)
    assert not new, (f"TrialConfig fields {new} are new: add each to ALWAYS, CONDITIONAL or SELECTION (a paper "
                     f"sweep must state it, with its source) or to OPERATIONAL in {Path(__file__).name}")
    assert not sorted(classified - set(TrialConfig.model_fields))


@pytest.mark.parametrize("path", PAPER_SWEEPS, ids=lambda p: p.stem)
def test_every_key_carries_its_source(path):
    spec = yaml.safe_load(path.read_text())
    keys, entries = sourced_lines(path)
    assert set(keys) == set(spec["base"]) | set(spec["grid"]), "one key per line, two-space indent"
    problems = [f"{key}: no '# paper|code|baseline|ours: ...' comment" for key, (tag, _) in keys.items() if not tag]
    problems += [f"{key}: {why}" for key, (tag, text) in keys.items()
                 if tag not in (None, "entries") and (why := check_source(tag, text))]
    assert len(entries) == len(spec["base"].get("eval_attacks", [])), "one eval_attacks entry per line"
    problems += [f"{line[:60]}: no source comment" for line, (tag, _) in entries if not tag]
    problems += [f"{line[:60]}: {why}" for line, (tag, text) in entries if tag and (why := check_source(tag, text))]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", PAPER_SWEEPS, ids=lambda p: p.stem)
def test_settings_that_decide_training_are_stated_not_defaulted(path):
    spec = yaml.safe_load(path.read_text())
    stated = set(spec["base"]) | set(spec["grid"])
    assert "preset" not in stated, "spell the preset's values out, each with its source"
    method = spec["base"].get("method")
    required = set(ALWAYS) | {k for k, methods in CONDITIONAL.items() if method in methods}
    if spec["base"].get("val_size"):
        required |= SELECTION
    assert not sorted(required - stated)


@pytest.mark.parametrize("path", PAPER_SWEEPS, ids=lambda p: p.stem)
def test_the_note_names_the_choices_that_could_move_the_numbers(path):
    spec = yaml.safe_load(path.read_text())
    keys, _ = sourced_lines(path)
    note = spec["report"].get("note") or ""
    unnamed = sorted(k for k in NOTE_KEYS & set(keys) if keys[k][0] != "paper" and not re.search(rf"\b{k}\b", note))
    assert not unnamed, f"report.note should name {unnamed} (not from the paper)"


def test_a_key_without_a_source_fails(tmp_path):
    bad = tmp_path / "table9.yaml"
    bad.write_text("name: t\nbase:\n  lr: 0.1  # paper: §5.2\n  momentum: 0.9\n  eval_attacks:\n"
                   "    - {name: fgsm}  # code: nowhere.py\ngrid:\n  seed: [0]  # ours: three seeds here\n")
    keys, entries = sourced_lines(bad)
    assert keys["momentum"] == (None, "") and keys["lr"][0] == "paper" and keys["seed"][0] == "ours"
    assert check_source(*entries[0][1]) is not None and check_source("paper", "Section 5") is not None
    assert check_source("code", "train.py:176") is None and check_source("baseline", "TRADES train.py") is None
