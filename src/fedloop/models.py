"""The model zoo: the models of the FedAvg paper and a few standard baselines, built for a data spec."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .errors import ConfigError


class LogReg(nn.Module):
    """Multinomial logistic regression (softmax regression) on flattened inputs."""

    def __init__(self, input_shape: Sequence[int], num_classes: int):
        super().__init__()
        self.linear = nn.Linear(math.prod(input_shape), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


class MLP(nn.Module):
    """The FedAvg paper's "2NN": two hidden layers of 200 ReLU units."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (200, 200)):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _image_shape(input_shape: Sequence[int], model: str) -> tuple[int, int, int]:
    if len(input_shape) == 2:
        h, w = input_shape
        return 1, h, w
    if len(input_shape) == 3:
        c, h, w = input_shape
        return c, h, w
    raise ConfigError(f"model.name = {model!r} needs image inputs (H, W) or (C, H, W); "
                      f"the data have shape {tuple(input_shape)}")


class CNN(nn.Module):
    """The FedAvg paper's CNN: two 5x5 conv layers (32, 64 channels) each followed by 2x2 max pooling,
    a fully connected layer of 512 ReLU units and a softmax output."""

    def __init__(self, input_shape: Sequence[int], num_classes: int):
        super().__init__()
        c, h, w = _image_shape(input_shape, "cnn")
        self.features = nn.Sequential(
            nn.Conv2d(c, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
        flat = 64 * (h // 4) * (w // 4)
        self.head = nn.Sequential(nn.Linear(flat, 512), nn.ReLU(), nn.Linear(512, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        return self.head(self.features(x))


class LeNet(nn.Module):
    """NIID-Bench's simple CNN (Li et al., ICDE 2022), LeNet-5 in shape: two 5x5 conv layers (6 and 16 channels, no
    padding) each followed by ReLU and 2x2 max pooling, then fully connected layers of 120 and 84 ReLU units."""

    def __init__(self, input_shape: Sequence[int], num_classes: int):
        super().__init__()
        c, h, w = _image_shape(input_shape, "lenet")
        self.features = nn.Sequential(
            nn.Conv2d(c, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
        flat = 16 * (((h - 4) // 2 - 4) // 2) * (((w - 4) // 2 - 4) // 2)
        self.head = nn.Sequential(nn.Linear(flat, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                                  nn.Linear(84, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        return self.head(self.features(x))


class CifarCNN(nn.Module):
    """A small CIFAR CNN: conv5x5(64)-pool-conv5x5(64)-pool-FC 384-FC 192 (the TensorFlow tutorial model
    used in the FedAvg paper's CIFAR experiments)."""

    def __init__(self, input_shape: Sequence[int], num_classes: int):
        super().__init__()
        c, h, w = _image_shape(input_shape, "cifar-cnn")
        self.features = nn.Sequential(
            nn.Conv2d(c, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2, padding=1),
            nn.Conv2d(64, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2, padding=1), nn.Flatten())
        with torch.no_grad():
            flat = self.features(torch.zeros(1, c, h, w)).shape[1]
        self.head = nn.Sequential(nn.Linear(flat, 384), nn.ReLU(), nn.Linear(384, 192), nn.ReLU(),
                                  nn.Linear(192, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        return self.head(self.features(x))


class CharLSTM(nn.Module):
    """The FedAvg paper's character model: 8-dim embedding, two LSTM layers of 256 units, and a softmax
    over `num_classes` (the next character for Shakespeare, the sentiment for Sent140) read at the last
    position of the sequence."""

    def __init__(self, vocab_size: int, num_classes: int, embed_dim: int = 8, hidden: int = 256):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(x))
        return self.head(out[:, -1])


MODELS = ("logreg", "mlp", "cnn", "lenet", "cifar-cnn", "char-lstm")


def build_model(name: str, input_shape: Sequence[int], num_classes: int,
                vocab_size: int | None = None) -> nn.Module:
    """A zoo model sized for the data (input shape, number of classes, vocabulary)."""
    if name == "logreg":
        return LogReg(input_shape, num_classes)
    if name == "mlp":
        return MLP(input_shape, num_classes)
    if name == "cnn":
        return CNN(input_shape, num_classes)
    if name == "lenet":
        return LeNet(input_shape, num_classes)
    if name == "cifar-cnn":
        return CifarCNN(input_shape, num_classes)
    if name == "char-lstm":
        if vocab_size is None:
            raise ConfigError("model.name = 'char-lstm' needs text data (shakespeare, sent140) "
                              "that define a character vocabulary")
        return CharLSTM(vocab_size, num_classes)
    raise ConfigError(f"model.name = {name!r} is unknown; allowed: {', '.join(MODELS)}")


def model_factory(name: str, spec: dict) -> Callable[[], nn.Module]:
    """A zero-argument factory for the zoo model `name` on data described by Dataset.spec()."""
    build_model(name, spec["input_shape"], spec["num_classes"], spec.get("vocab_size"))  # fail early

    def factory() -> nn.Module:
        return build_model(name, spec["input_shape"], spec["num_classes"], spec.get("vocab_size"))

    return factory
