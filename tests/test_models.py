"""The model zoo builds for its data and trains end to end; user models work through the API."""

import pytest
import torch
from conftest import options
from torch import nn

from fedloop import ConfigError, FedAvg, LocalSGD, Sampler, build_model, make_partition, simulate
from fedloop.data.leaf import VOCAB_SIZE
from fedloop.params import num_elements


@pytest.mark.parametrize("name,shape,classes", [
    ("logreg", (8, 8), 10), ("mlp", (28, 28), 10), ("cnn", (28, 28), 10), ("cnn", (1, 28, 28), 62),
    ("cifar-cnn", (3, 32, 32), 100), ("logreg", (60,), 10), ("lenet", (28, 28), 10), ("lenet", (3, 32, 32), 10),
    ("lenet", (1, 29, 31), 5)])
def test_zoo_models_output_class_scores(name, shape, classes):
    m = build_model(name, shape, classes)
    assert m(torch.zeros(4, *shape)).shape == (4, classes)


def test_fedavg_paper_sizes():
    assert num_elements(dict(build_model("mlp", (28, 28), 10).named_parameters())) == 199_210
    assert num_elements(dict(build_model("cnn", (28, 28), 10).named_parameters())) == 1_663_370
    # NIID-Bench's simple CNN: conv 6@5x5 (156) + conv 16@5x5 (2,416) + 256x120 + 120x84 + 84x10 with biases
    assert num_elements(dict(build_model("lenet", (28, 28), 10).named_parameters())) == 156 + 2416 + 30840 + 10164 + 850
    lstm = build_model("char-lstm", (80,), VOCAB_SIZE, vocab_size=VOCAB_SIZE)
    assert lstm(torch.zeros(2, 80, dtype=torch.long)).shape == (2, VOCAB_SIZE)


def test_unknown_or_unfit_model_is_a_clear_error():
    with pytest.raises(ConfigError, match="'resnet' is unknown"):
        build_model("resnet", (8, 8), 10)
    with pytest.raises(ConfigError, match="needs image inputs"):
        build_model("cnn", (60,), 10)
    with pytest.raises(ConfigError, match="char-lstm"):
        build_model("char-lstm", (80,), 10)


def test_a_user_module_and_loss_train_through_the_api(data):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))

        def forward(self, x):
            return self.body(x)

    calls = []

    def loss(out, y):
        calls.append(1)
        return nn.functional.cross_entropy(out, y, label_smoothing=0.1)

    part = make_partition(data, "iid", 4, seed=0)
    res = simulate(Net, data, part, FedAvg(sampler=Sampler(4), local=LocalSGD(lr=0.1)), options(5), loss_fn=loss)
    assert calls and isinstance(res.model, Net)
    assert res.metrics["accuracy"] > 0.8


def test_char_lstm_trains_on_shakespeare_like_data(tmp_path):
    from test_data import leaf_dir

    from fedloop import load_dataset

    text = "to be or not to be that is the question " * 4
    rows = [text[i:i + 20] for i in range(40)]
    ys = [text[i + 20] for i in range(40)]
    leaf_dir(tmp_path, {"A": (rows[:20], ys[:20]), "B": (rows[20:], ys[20:])}, {"A": (rows[:4], ys[:4])})
    d = load_dataset("shakespeare", tmp_path)
    part = make_partition(d, "natural", 2, seed=0, local_test_fraction=0)
    model_fn = lambda: build_model("char-lstm", d.input_shape, d.num_classes, d.vocab_size)  # noqa: E731
    res = simulate(model_fn, d, part, FedAvg(sampler=Sampler(2), local=LocalSGD(epochs=1, batch_size=8, lr=0.5)),
                   options(4))
    losses = [h["train_loss"] for h in res.history]
    assert losses[-1] < losses[0], losses
