"""The transform chain: clipping on the client or the server, client steps in order, aggregate steps in reverse
order, each seeded by (seed, round[, client]) and keeping its state in the server state (and so in checkpoints)."""

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from conftest import blobs, manual_partition, options

from fedloop import Clip, FedAvg, MockFleet, RoundPolicy, Sampler, Transform, simulate
from fedloop.loop import run_loop
from fedloop.params import norm
from fedloop.stops import MaxRounds
from fedloop.store import load_checkpoint, save_checkpoint
from fedloop.types import Update

W0 = {"w": torch.zeros(3)}
CALLS: list[tuple] = []


def big_update(task):
    return Update(task.client_id, task.round, {"w": torch.tensor([3.0, 4.0, 0.0]) * (task.client_id + 1)}, 10)


def test_client_side_clipping_scales_the_update_to_the_norm_and_reports_it():
    clip = Clip(max_norm=2.5)
    out, metrics = clip.client(None, {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([4.0])}, seed=0)
    assert norm(out) == pytest.approx(2.5) and metrics == {"update_norm": 5.0, "clipped": 1.0}
    same, metrics = clip.client(None, {"a": torch.tensor([0.3])}, seed=0)
    assert torch.equal(same["a"], torch.tensor([0.3])) and metrics["clipped"] == 0.0


def test_the_server_rejects_an_update_the_client_did_not_clip():
    strategy = FedAvg(sampler=Sampler(None), transforms=(Clip(1.0, "client"),))
    with pytest.raises(Exception, match="failed 1 times"):
        run_loop(strategy, MockFleet(big_update, 3), strategy.init(W0, 0), [MaxRounds(1)],
                 federated_eval=False, policy=RoundPolicy(retries=0))
    fleet = MockFleet(lambda t: Update(t.client_id, t.round, {"w": torch.tensor([0.6, 0.8, 0.0])}, 10), 3)
    res = run_loop(strategy, fleet, strategy.init(W0, 0), [MaxRounds(1)], federated_eval=False)
    assert res.records[0].updates == 3  # at the norm (beyond float rounding only) is accepted


def test_server_side_clipping_bounds_every_update_before_the_mean():
    strategy = FedAvg(sampler=Sampler(None), transforms=(Clip(1.0, "server"),))
    res = run_loop(strategy, MockFleet(big_update, 3), strategy.init(W0, 0), [MaxRounds(1)], federated_eval=False)
    assert torch.allclose(res.state.params["w"], -torch.tensor([0.6, 0.8, 0.0]))  # three clipped (0.6, 0.8, 0)
    assert res.records[0].metrics["clipped"] == 1.0
    assert res.records[0].metrics["update_norm"] == pytest.approx((5 + 10 + 15) / 3)


@dataclass(frozen=True)
class Tagged(Transform):
    """Records the order of its steps; its aggregate step counts rounds in its state and adds `bump`."""

    name: ClassVar[str] = "tagged"
    tag: str = "a"
    bump: float = 0.0

    def init(self, params):
        return {"count": torch.zeros((), dtype=torch.int64)}

    def client(self, task, update, seed):
        CALLS.append(("client", self.tag, task.client_id, seed))
        return update, {f"seen_{self.tag}": 1.0}

    def server_aggregate(self, params, state, seed, info):
        CALLS.append(("aggregate", self.tag, seed))
        return {k: v + self.bump for k, v in params.items()}, {"count": state["count"] + 1}, {}


def test_client_steps_run_in_order_and_aggregate_steps_in_reverse_with_their_own_seeds_and_state(tmp_path):
    CALLS.clear()
    data = blobs(n_train=30)
    strategy = FedAvg(sampler=Sampler(2), transforms=(Tagged("a", 0.5), Tagged("b", 0.25)))
    res = simulate(lambda: torch.nn.Linear(5, 3), data, manual_partition([10, 10, 10]), strategy, options(3, 7))
    clients = [c for c in CALLS if c[0] == "client"]
    assert [c[1] for c in clients[:2]] == ["a", "b"] and clients[0][2] == clients[1][2]
    assert clients[0][3] != clients[1][3]  # each transform draws from its own seed
    aggregates = [c for c in CALLS if c[0] == "aggregate"]
    assert [c[1] for c in aggregates] == ["b", "a"] * 3
    assert len({c[2] for c in aggregates}) == 6  # per round and per transform
    assert res.state.transform_state.keys() == {"0/count", "1/count"}
    assert int(res.state.transform_state["0/count"]) == int(res.state.transform_state["1/count"]) == 3
    assert res.history[-1]["seen_a"] == res.history[-1]["seen_b"] == 1.0
    save_checkpoint(tmp_path / "ck.safetensors", res.state)
    back, _ = load_checkpoint(tmp_path / "ck.safetensors")
    assert dict(back.transform_state) == dict(res.state.transform_state)
    CALLS.clear()
    again = simulate(lambda: torch.nn.Linear(5, 3), data, manual_partition([10, 10, 10]), strategy, options(3, 7))
    assert [c for c in CALLS if c[0] == "aggregate"] == aggregates and again.state.round == 3
