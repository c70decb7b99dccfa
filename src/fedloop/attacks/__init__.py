"""Attacks for testing defences: a fixed set of malicious clients that poison their data or their uploads."""

from .fleet import AttackFleet
from .options import AttackOptions
from .poison import add_trigger, backdoor_success, poisoned
from .updates import alie_z, attack_update, attacked

__all__ = ["AttackFleet", "AttackOptions", "add_trigger", "alie_z", "attack_update", "attacked", "backdoor_success",
           "poisoned"]
