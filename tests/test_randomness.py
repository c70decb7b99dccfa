"""The secret random stream that DP noise and DP sampling come from: its Gaussians are standard normal (mean,
variance, tails, Kolmogorov-Smirnov, each at >= 6 sigma so a false failure has probability below 1e-8), its
decisions are uniform, and it never repeats, across calls or processes."""

import math
import subprocess
import sys

import pytest
import torch
from scipy import stats

from fedloop.randomness import SecretStream, Seeded, draws, secret

N = 1_000_000


def test_the_gaussian_stream_is_standard_normal():
    z = SecretStream().gaussian((N,), torch.float64)
    assert abs(float(z.mean())) < 6 / math.sqrt(N)
    assert abs(float(z.var()) - 1.0) < 6 * math.sqrt(2 / N)
    assert stats.kstest(z.numpy(), "norm").pvalue > 1e-9
    beyond = int((z.abs() > 4).sum())  # 2 (1 - Phi(4)) N = 63.3 expected; Poisson sd 8
    expected = 2 * stats.norm.sf(4) * N
    assert abs(beyond - expected) < 6 * math.sqrt(expected) + 1


def test_the_stream_draws_in_float64_and_casts_at_the_end():
    stream = SecretStream()
    assert stream.gaussian((3, 4)).dtype == torch.float32 and stream.gaussian((3, 4)).shape == (3, 4)
    assert stream.gaussian((), torch.float64).shape == ()
    u = stream.uniform(N)
    assert u.dtype == torch.float64 and 0 < float(u.min()) and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 6 * math.sqrt(1 / 12 / N)
    assert len(torch.unique(u)) == N  # 53 random bits each: no collision among a million (probability ~5e-5)


def test_uniform_integers_bernoulli_and_samples_are_uniform():
    stream = SecretStream()
    counts = torch.bincount(stream.integers(7, 70_000), minlength=7)
    assert stats.chisquare(counts.numpy()).pvalue > 1e-9
    hits = int(stream.bernoulli(0.3, 100_000).sum())
    assert abs(hits - 30_000) < 6 * math.sqrt(100_000 * 0.3 * 0.7)
    firsts = torch.bincount(torch.stack([stream.sample(10, 3) for _ in range(20_000)])[:, 0], minlength=10)
    assert stats.chisquare(firsts.numpy()).pvalue > 1e-9
    picked = stream.sample(50, 20)
    assert len(set(picked.tolist())) == 20 and 0 <= int(picked.min()) and int(picked.max()) < 50
    with pytest.raises(ValueError, match="cannot sample 5 of 4"):
        stream.sample(4, 5)


def test_the_stream_never_repeats_across_calls_streams_or_processes():
    stream = SecretStream()
    a, b = stream.bytes(64), stream.bytes(64)
    assert a != b and SecretStream().bytes(64) != SecretStream().bytes(64)
    code = "from fedloop.randomness import secret; print(secret().bytes(32).hex())"
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            for _ in range(2)}
    assert len(runs) == 2


def test_a_forked_child_gets_its_own_stream_not_its_parents():
    import multiprocessing

    parent = secret()
    with multiprocessing.get_context("fork").Pool(2) as pool:
        children = pool.map(_draw, range(2))
    assert secret() is parent
    assert len({*children, parent.bytes(32).hex()}) == 3


def _draw(_: int) -> str:
    return secret().bytes(32).hex()


def test_the_research_setting_is_the_seeded_generator_and_says_so():
    assert isinstance(draws(True, 0), SecretStream)
    a, b = draws(False, 7), draws(False, 7)
    assert isinstance(a, Seeded) and torch.equal(a.gaussian((5,)), b.gaussian((5,)))
    assert torch.equal(a.sample(10, 4), b.sample(10, 4))
