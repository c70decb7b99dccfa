"""Closed-form gradients of dense softmax classifiers (sim/dense.py) against autograd through vmap."""

import pytest
import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.nn import functional as F

from fedloop.models import CNN, MLP, LogReg
from fedloop.sim.dense import dense_layers, loss_grads


class WiderMLP(MLP):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


def flat_net(*inner: nn.Module) -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), *inner)


DENSE = {
    "logreg": lambda: LogReg((3, 4), 5),
    "mlp": lambda: MLP((3, 4), 5, hidden=(7, 6)),
    "sequential without biases": lambda: flat_net(nn.Linear(12, 9, bias=False), nn.ReLU(), nn.Linear(9, 5, bias=False)),
}

NOT_DENSE = {
    "a CNN": (lambda: CNN((8, 8), 5), F.cross_entropy),
    "a subclass with its own forward": (lambda: WiderMLP((3, 4), 5), F.cross_entropy),
    "tanh": (lambda: flat_net(nn.Linear(12, 9), nn.Tanh(), nn.Linear(9, 5)), F.cross_entropy),
    "no flatten first": (lambda: nn.Sequential(nn.Linear(12, 5)), F.cross_entropy),
    "a partial flatten": (lambda: nn.Sequential(nn.Flatten(2), nn.Linear(4, 5)), F.cross_entropy),
    "a ReLU last": (lambda: flat_net(nn.Linear(12, 5), nn.ReLU()), F.cross_entropy),
    "two ReLUs in a row": (lambda: flat_net(nn.Linear(12, 9), nn.ReLU(), nn.ReLU(), nn.Linear(9, 5)),
                           F.cross_entropy),
    "dropout": (lambda: flat_net(nn.Linear(12, 9), nn.ReLU(), nn.Dropout(0.0), nn.Linear(9, 5)), F.cross_entropy),
    "another loss": (lambda: LogReg((3, 4), 5), F.nll_loss),
}


@pytest.mark.parametrize("name", list(NOT_DENSE))
def test_only_dense_softmax_classifiers_are_recognised(name):
    model_fn, loss = NOT_DENSE[name]
    assert dense_layers(model_fn(), loss) is None


def test_the_layers_of_fedloops_mlp_are_named_as_its_params():
    model = MLP((3, 4), 5, hidden=(7, 6))
    layers = dense_layers(model, F.cross_entropy)
    assert layers is not None
    assert [(lay.weight, lay.bias, lay.relu) for lay in layers] == [("net.1.weight", "net.1.bias", True),
                                                                     ("net.3.weight", "net.3.bias", True),
                                                                     ("net.5.weight", "net.5.bias", False)]
    named = {k for k, _ in model.named_parameters()}
    assert {n for lay in layers for n in (lay.weight, lay.bias)} == named


@pytest.mark.parametrize("name", list(DENSE))
def test_closed_form_gradients_equal_autograd_through_vmap(name):
    torch.manual_seed(0)
    model = DENSE[name]()
    layers = dense_layers(model, F.cross_entropy)
    assert layers is not None
    clients, batch = 4, 6
    params = {k: torch.stack([v.detach() + 0.3 * torch.randn_like(v) for _ in range(clients)])
              for k, v in model.named_parameters()}
    x = torch.randn(clients, batch, 3, 4)
    y = torch.randint(0, 5, (clients, batch))
    weights = torch.rand(clients, batch) / batch
    weights[1, 4:] = 0.0  # padding rows of a short last batch count for nothing
    grads, rows, logits = loss_grads(layers, params, x, y, weights)

    live = {k: v.clone().requires_grad_() for k, v in params.items()}
    out = vmap(lambda p, xb: functional_call(model, p, (xb,)))(live, x)
    want_rows = F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none").view(clients, batch)
    want = torch.autograd.grad((want_rows * weights).sum(), list(live.values()))
    torch.testing.assert_close(logits, out.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rows, want_rows.detach(), rtol=1e-5, atol=1e-6)
    assert set(grads) == set(params)
    for k, g in zip(live, want, strict=True):
        torch.testing.assert_close(grads[k], g, rtol=1e-5, atol=1e-6)
    assert grads[next(iter(live))][1].abs().sum() > 0  # a client with padding still learns from its real rows
