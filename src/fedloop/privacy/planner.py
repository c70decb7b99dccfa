"""`fedloop privacy CONFIG`: what a config's privacy settings spend before running it. For the config's rounds,
sampling and delta it prints the epsilon a noise multiplier gives, or calibrates the noise multiplier for a target
epsilon, and the accuracy cost measured by benchmarks/privacy.py when a measured cell matches."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from ..errors import ConfigError
from ..strategies.base import Strategy
from .accountant import epsilon
from .options import PrivacyOptions, calibrate_noise, planned_release

RESULTS = Path(__file__).resolve().parents[3] / "benchmarks" / "results" / "privacy"
"""Where benchmarks/privacy.py writes one JSON file per measured cell (in a source checkout)."""


def plan(strategy: Strategy, options: PrivacyOptions, rounds: int, population: int, sizes: Sequence[int],
         dataset: str, target: float | None = None, noise: float | None = None) -> list[str]:
    z: float | None
    """The planner's lines."""
    if options.mode == "none":
        raise ConfigError("privacy.mode = 'none': set privacy.mode to central, local or dp-sgd to plan a budget")
    if target is None and noise is None:
        target = options.target_epsilon
    if target is not None:
        options = replace(options, target_epsilon=target, max_epsilon=None)
        z = calibrate_noise(strategy, options, rounds, population, sizes)
    else:
        z = noise if noise is not None else options.noise_multiplier
        if z is None:
            raise ConfigError("privacy: give --noise Z, --epsilon E, or privacy.noise_multiplier in the config")
    release = planned_release(strategy, options, z, population, sizes)
    kind = "rdp" if options.mode == "dp-sgd" else options.accountant
    lines = [f"mode {options.mode}, {rounds} rounds, {population} clients, delta {options.delta:g}, "
             f"accountant {kind}", "mechanism: " + _describe(options, release)]
    if target is not None:
        lines.append(f"noise multiplier {z:.4f} spends epsilon {target:g} in {rounds} rounds")
    checkpoints = sorted({max(1, rounds // 4), max(1, rounds // 2), rounds})
    lines.append("epsilon after " + ", ".join(
        f"{r} rounds: {epsilon([(release, r)], options.delta, kind):.3f}" for r in checkpoints))
    lines.append(_cost(dataset, options, epsilon([(release, rounds)], options.delta, kind)))
    return lines


def _describe(options: PrivacyOptions, release) -> str:
    who = "examples of the client with the fewest" if options.mode == "dp-sgd" else "clients"
    if release.sampling == "poisson":
        how = f"Poisson sampling of {who}, q = {release.rate:.4g}"
    elif release.sampling == "fixed" and release.sample < release.population:
        how = f"{release.sample} of {release.population} {who} without replacement (replace-one)"
    else:
        how = "no amplification by sampling (replace-one)"
    steps = f", {release.steps} steps per round" if release.steps > 1 else ""
    return f"Gaussian, noise multiplier {release.noise_multiplier:.4g}, clip {options.clip:g}; {how}{steps}"


def _cost(dataset: str, options: PrivacyOptions, eps: float) -> str:
    """The measured accuracy nearest this epsilon, for this dataset and mode, from the benchmark's cells."""
    cells = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))] if RESULTS.is_dir() else []
    cells = [c for c in cells if c.get("dataset") == dataset]
    private = [c for c in cells if c.get("mode") == options.mode and c.get("clipping") == options.clipping]
    baseline = [c["accuracy"] for c in cells if c.get("mode") == "none"]
    if not private or not baseline:
        return f"expected accuracy cost: not measured for {dataset} with mode {options.mode} " \
               "(benchmarks/privacy.py measures it)"
    target = min((c["epsilon_target"] for c in private), key=lambda e: abs(e - eps))
    near = [c for c in private if c["epsilon_target"] == target]
    return (f"expected accuracy cost (benchmarks/privacy.py, {near[0]['clients']} clients, {near[0]['rounds']} "
            f"rounds, mean of {len(near)} runs): accuracy {statistics.mean(c['accuracy'] for c in near):.4f} at "
            f"epsilon {target:g} vs {statistics.mean(baseline):.4f} without privacy")
