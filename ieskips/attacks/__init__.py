"""The attack suite: ``attack(model, images, labels) -> adv_images``, everything in [0, 1]."""
from .autoattack import AutoAttack, Square
from .base import Attack
from .cw import CWL2
from .feature import FeatureSpace
from .fgsm import FGSM
from .pgd import PGD
from .pgd_best import BestPGD
from .pgd_ift import IFTPGD
from .pgd_solver import SolverPGD
from .registry import attack_label, build_attack, list_attacks, register_attack
from .spsa import SPSA
from .transfer import Transfer

__all__ = ["Attack", "AutoAttack", "BestPGD", "CWL2", "FGSM", "FeatureSpace", "IFTPGD", "PGD", "SPSA", "SolverPGD",
           "Square", "Transfer", "attack_label", "build_attack", "list_attacks", "register_attack"]
