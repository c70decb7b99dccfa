"""FedAvgM, FedAdam, FedYogi and FedAdagrad against their update equations, computed by hand in plain PyTorch:
the clients' local SGD, the sample-weighted mean of W_global - W_local, then the server step of Hsu et al. 2019
(momentum) or Reddi et al. 2021, Algorithm 2 (adaptive), over several rounds with partial participation."""

import pytest
import torch
from conftest import blobs, manual_partition, options
from conftest import small_model as model_fn
from torch.nn import functional as F

from fedloop import SGD, Adagrad, Adam, FedAdagrad, FedAdam, FedAvgM, FedYogi, LocalSGD, Sampler, SimOptions, Yogi
from fedloop.params import allclose
from fedloop.run import initial_params
from fedloop.sampling import round_rng, task_seed
from fedloop.types import ClientInfo

SIZES = [7, 13, 22, 38, 11]
LOCAL = LocalSGD(epochs=2, batch_size=4, lr=0.1)


def local_sgd(w: dict, x: torch.Tensor, y: torch.Tensor, seed: int) -> dict:
    """Plain PyTorch: LOCAL's epochs of minibatch SGD from w, batches drawn from `seed`."""
    m = model_fn()
    m.load_state_dict(w)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(LOCAL.epochs):
        order = torch.randperm(len(y), generator=gen)
        for s in range(0, len(y), LOCAL.batch_size):
            b = order[s:s + LOCAL.batch_size]
            m.zero_grad()
            F.cross_entropy(m(x[b]), y[b]).backward()
            with torch.no_grad():
                for p in m.parameters():
                    p -= LOCAL.lr * p.grad
    return {k: v.detach() for k, v in m.state_dict().items()}


def by_hand(strategy, server_step, seed: int, rounds: int) -> dict:
    """The global params after `rounds` rounds: hand-trained clients, their weighted mean, `server_step`."""
    data, part = blobs(n_train=sum(SIZES)), manual_partition(SIZES)
    w = initial_params(model_fn, seed)
    clients = [ClientInfo(i, n) for i, n in enumerate(SIZES)]
    memory: dict = {}
    for r in range(1, rounds + 1):
        chosen = [c.client_id for c in strategy.sampler.select(clients, round_rng(seed, r))]
        n = sum(SIZES[i] for i in chosen)
        g = {k: torch.zeros_like(v) for k, v in w.items()}
        for i in chosen:
            idx = torch.as_tensor(part.train[i])
            trained = local_sgd(w, data.x_train[idx], data.y_train[idx], task_seed(seed, r, i))
            for k in g:
                g[k] += SIZES[i] / n * (w[k] - trained[k])  # the pseudo-gradient W_global - W_local
        w = server_step(w, g, memory)
    return w


def momentum(lr: float, beta: float):
    def step(w, g, mem):
        mem.update({k: beta * mem.get(k, torch.zeros_like(v)) + g[k] for k, v in w.items()})
        return {k: w[k] - lr * mem[k] for k in w}
    return step


def adaptive(lr: float, beta1: float, tau: float, second_moment):
    """Reddi et al. 2021, Algorithm 2 with Delta = -g: m_t = b1 m + (1 - b1) Delta, v_t as given,
    x <- x + lr m_t / (sqrt(v_t) + tau); m starts at 0, v at tau^2."""
    def step(w, g, mem):
        out = {}
        for k in w:
            delta = -g[k]
            m = beta1 * mem.get(("m", k), torch.zeros_like(delta)) + (1 - beta1) * delta
            v = second_moment(mem.get(("v", k), torch.full_like(delta, tau ** 2)), delta * delta)
            mem[("m", k)], mem[("v", k)] = m, v
            out[k] = w[k] + lr * m / (v.sqrt() + tau)
        return out
    return step


CASES = {
    "fedavgm": (FedAvgM(sampler=Sampler(3), local=LOCAL, server_opt=SGD(lr=0.7, momentum=0.9)),
                momentum(0.7, 0.9)),
    "fedadam": (FedAdam(sampler=Sampler(3), local=LOCAL, server_opt=Adam(lr=0.03, beta1=0.8, beta2=0.95, tau=1e-2)),
                adaptive(0.03, 0.8, 1e-2, lambda v, d2: 0.95 * v + 0.05 * d2)),
    "fedyogi": (FedYogi(sampler=Sampler(3), local=LOCAL, server_opt=Yogi(lr=0.03, beta1=0.8, beta2=0.95, tau=1e-2)),
                adaptive(0.03, 0.8, 1e-2, lambda v, d2: v - 0.05 * d2 * torch.sign(v - d2))),
    "fedadagrad": (FedAdagrad(sampler=Sampler(3), local=LOCAL, server_opt=Adagrad(lr=0.05, beta1=0.5, tau=1e-2)),
                   adaptive(0.05, 0.5, 1e-2, lambda v, d2: v + d2)),
}


@pytest.mark.parametrize("executor", ["sequential", "vectorized"])
@pytest.mark.parametrize("name", list(CASES))
def test_server_optimizers_follow_their_update_equations(name, executor):
    from fedloop import simulate

    strategy, step = CASES[name]
    seed, rounds = 6, 4
    res = simulate(model_fn, blobs(n_train=sum(SIZES)), manual_partition(SIZES), strategy, options(rounds, seed),
                   sim=SimOptions(executor=executor))
    expected = by_hand(strategy, step, seed, rounds)
    assert allclose(res.state.params, expected, rtol=1e-5, atol=1e-6)
    plain = by_hand(strategy, momentum(1.0, 0.0), seed, rounds)  # and the server step mattered
    assert not allclose(res.state.params, plain, rtol=1e-3, atol=1e-4)


def test_yogi_moves_v_towards_g2_by_at_most_its_step_and_adam_averages():
    """One step by hand with numbers: v = 0.5, g^2 = 4 and v = 5, g^2 = 4."""
    g = {"w": torch.tensor([2.0, 2.0])}
    state = {"m/w": torch.zeros(2), "v/w": torch.tensor([0.5, 5.0])}
    _, yogi = Yogi(lr=1.0, beta1=0.0, beta2=0.9, tau=1.0).step({"w": torch.zeros(2)}, g, state)
    assert torch.allclose(yogi["v/w"], torch.tensor([0.5 + 0.1 * 4, 5.0 - 0.1 * 4]))
    _, adam = Adam(lr=1.0, beta1=0.0, beta2=0.9, tau=1.0).step({"w": torch.zeros(2)}, g, state)
    assert torch.allclose(adam["v/w"], torch.tensor([0.9 * 0.5 + 0.4, 0.9 * 5.0 + 0.4]))
    params, ada = Adagrad(lr=1.0, beta1=0.0, tau=1.0).step({"w": torch.zeros(2)}, g, state)
    assert torch.allclose(ada["v/w"], torch.tensor([4.5, 9.0]))
    assert torch.allclose(params["w"], -2.0 / (torch.tensor([4.5, 9.0]).sqrt() + 1.0))
