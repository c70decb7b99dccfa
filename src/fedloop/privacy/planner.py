"""`fedloop privacy CONFIG`: what a config's privacy settings spend before running it. For the config's rounds,
sampling and delta it prints the epsilon a noise multiplier gives, or calibrates the noise multiplier for a target
epsilon, and the accuracy cost measured by benchmarks/privacy.py when a measured cell matches."""

from __future__ import annotations

import json
import math
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


LEARNS_AT = 2.7
"""The largest noise-to-signal ratio of a released mean among benchmarks/privacy.py's measured cells, all of which
still learn: epsilon 1 on Fashion-MNIST, softmax regression (d = 7,850), 100 clients per round, z = 3.07 gives
3.07 x sqrt(7850) / 100 = 2.72 and 0.71 test accuracy (0.84 without privacy). tests/test_privacy.py checks it
against the cells."""


def noise_to_signal(options: PrivacyOptions, z: float, num_params: int, per_round: float, batch: int) -> float:
    """The L2 norm of the noise on the released mean against the largest clipped signal, C: central DP adds
    N(0, (zC)^2) per coordinate to the sum of m updates (z sqrt(d) / m); local DP's m independent noises average
    down to z sqrt(d) / sqrt(m); a DP-SGD step adds it to the sum of B clipped example gradients (z sqrt(d) / B)."""
    spread = z * math.sqrt(num_params)
    if options.mode in ("central", "distributed"):  # distributed: at least this noise reaches the sum
        return spread / max(per_round, 1e-12)
    if options.mode == "local":
        return spread / math.sqrt(max(per_round, 1e-12))
    return spread / batch


def _signal_lines(options: PrivacyOptions, z: float, num_params: int, per_round: float, batch: int) -> list[str]:
    ratio = noise_to_signal(options, z, num_params, per_round, batch)
    where = {"central": f"{per_round:g} clients per round", "local": f"{per_round:g} clients per round",
             "distributed": f"{per_round:g} clients per round", "dp-sgd": f"batches of {batch} examples"}[options.mode]
    lines = [f"noise-to-signal of the released mean: {ratio:.3g} (noise norm over the clip norm; {num_params:,} "
             f"params, {where}); measured cells still learn at {LEARNS_AT:g}"]
    if ratio > 2 * LEARNS_AT:
        need = {"central": ("clients per round (strategy.clients_per_round)", ratio / LEARNS_AT * per_round),
                "distributed": ("clients per round (strategy.clients_per_round)", ratio / LEARNS_AT * per_round),
                "local": ("clients per round (strategy.clients_per_round)", (ratio / LEARNS_AT) ** 2 * per_round),
                "dp-sgd": ("examples per batch (client.batch_size)", ratio / LEARNS_AT * batch)}[options.mode]
        fewer = int(num_params / (ratio / LEARNS_AT) ** 2)
        lines.append(f"warning: the noise drowns the signal ({ratio:.3g} is far above {LEARNS_AT:g}): the model will "
                     f"likely not learn. About {math.ceil(need[1]):,} {need[0]} at this noise, or a model of about "
                     f"{fewer:,} params, would bring it to {LEARNS_AT:g}; a larger epsilon lowers the noise too")
    return lines


def plan(strategy: Strategy, options: PrivacyOptions, rounds: int, population: int, sizes: Sequence[int],
         dataset: str, target: float | None = None, noise: float | None = None, num_params: int | None = None
         ) -> list[str]:
    """The planner's lines (with `num_params`, the model's size: the noise-to-signal of the released mean)."""
    z: float | None
    if options.mode == "none":
        raise ConfigError("privacy.mode = 'none': set privacy.mode to central, local, dp-sgd or distributed to plan a "
                          "budget")
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
    if num_params is not None:
        lines += _signal_lines(options, z, num_params, strategy.sampler.expected(population),
                               getattr(strategy.local, "batch_size", 1))
    return lines


def _describe(options: PrivacyOptions, release) -> str:
    who = "examples of the client with the fewest" if options.mode == "dp-sgd" else "clients"
    if options.mode == "distributed":
        return (f"distributed discrete Gaussian under secure aggregation, noise multiplier at least "
                f"{release.noise_multiplier:.4g} in the sum (more when more clients than the threshold survive), "
                f"clip {options.clip:g}; every round counts for every client (no amplification by sampling)")
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
