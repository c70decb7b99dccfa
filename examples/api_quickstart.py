"""The Python API in a few lines: your own model, a built-in dataset, a non-IID partition, FedAvg."""

from torch import nn

import fedloop


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x):
        return self.body(x)


if __name__ == "__main__":
    data = fedloop.load_dataset("digits")
    partition = fedloop.make_partition(data, "dirichlet", num_clients=30, seed=0, alpha=0.5)
    strategy = fedloop.FedAvg(sampler=fedloop.Sampler(clients_per_round=10),
                              local=fedloop.LocalSGD(epochs=5, batch_size=10, lr=0.05))
    result = fedloop.simulate(Net, data, partition, strategy, fedloop.RunOptions(rounds=30, seed=0,
                                                                                  out="runs/api-quickstart"))
    print(f"accuracy {result.metrics['accuracy']:.4f} after {result.state.round} rounds "
          f"({result.stop_reason}); files in {result.out}")
    model = fedloop.load_model(result.out, Net)  # the trained nn.Module, read back from disk
