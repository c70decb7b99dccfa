"""What secret noise costs: samples per second of the secret Gaussian stream (fedloop/randomness.py, AES-256-CTR
keystream and Box-Muller in float64) against torch.randn, and the per-round time of the default job under local
DP and under central DP with secure noise against privacy.secure_noise = false. Ratios are measured in this one
process, each case repeated and the best time kept; nothing else should run on the machine meanwhile.

    python benchmarks/noise.py            # the figures in benchmarks/RESULTS.md
    python benchmarks/noise.py --rounds 5 --repeats 3
"""

from __future__ import annotations

import argparse
import time

import torch
from jobs import CENTRAL_DP, LOCAL_DP
from jobs import round_seconds as job_round_seconds

from fedloop.randomness import secret

JOBS = {"local DP (default job, z = 1, C = 1)": LOCAL_DP, "central DP (the README's example, z = 2.13)": CENTRAL_DP}


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def round_seconds(sets: list[str], secure: bool, rounds: int) -> float:
    """The median seconds of a round of the job, with or without secure noise, on the sequential executor."""
    return job_round_seconds([*sets, f"privacy.secure_noise={str(secure).lower()}", "sim.executor=sequential"], rounds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rounds", type=int, default=12)
    args = p.parse_args()
    stream = secret()
    print(f"torch threads {torch.get_num_threads()}")
    for n in (10**6, 10**7):
        ours = best(lambda n=n: stream.gaussian((n,)), args.repeats)
        theirs = best(lambda n=n: torch.randn(n), args.repeats)
        print(f"{n:>10,} Gaussians: secret stream {n / ours / 1e6:7.1f} M/s, torch.randn {n / theirs / 1e6:7.1f} "
              f"M/s, ratio {ours / theirs:.2f}x the time of torch.randn")
    for name, sets in JOBS.items():
        seeded, secure = [], []
        for _ in range(max(1, args.repeats // 2)):  # alternated, so drift in the machine hits both
            seeded.append(round_seconds(sets, False, args.rounds))
            secure.append(round_seconds(sets, True, args.rounds))
        a, b = min(seeded), min(secure)
        print(f"{name}: a round takes {b * 1e3:.1f} ms with secure noise, {a * 1e3:.1f} ms seeded: "
              f"{(b / a - 1) * 100:+.1f}%")


if __name__ == "__main__":
    main()
