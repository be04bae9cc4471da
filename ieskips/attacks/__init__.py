"""The attack suite: ``attack(model, images, labels) -> adv_images``, everything in [0, 1]."""
from .autoattack import AutoAttack, Square
from .base import Attack
from .cw import CWL2
from .fgsm import FGSM
from .pgd import PGD
from .registry import attack_label, build_attack, list_attacks, register_attack
from .transfer import Transfer

__all__ = ["Attack", "AutoAttack", "CWL2", "FGSM", "PGD", "Square", "Transfer", "attack_label", "build_attack",
           "list_attacks", "register_attack"]
