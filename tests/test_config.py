"""Config validation: unknown keys and bad values name the key, the value and what is allowed."""

import tomllib

import pytest

from fedloop import ConfigError, load_config
from fedloop.config import to_toml


def write(tmp_path, text):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_defaults_are_the_embedded_digits_job():
    cfg = load_config()
    assert cfg.data.name == "digits" and cfg.partition.num_clients >= 20 and cfg.partition.scheme != "iid"
    assert cfg.sim.executor == "auto" and cfg.sim.engine == "local"


def test_issue_example_names_are_accepted(tmp_path):
    cfg = load_config(write(tmp_path, """
seed = 0
rounds = 30
[data]
name = "fashion-mnist"
path = "/x"
[partition]
scheme = "iid"
num_clients = 100
alpha = 0.5
shards_per_client = 2
[model]
name = "cnn"
[strategy]
name = "fedavg"
clients_per_round = 10
server_lr = 1.0
weighting = "samples"
[client]
epochs = 1
batch_size = 10
lr = 0.05
[eval]
every = 10
[stop]
target_accuracy = 0.99
patience = 5
"""))
    assert cfg.model.name == "cnn" and cfg.stop.patience == 5 and cfg.data.path == "/x"


@pytest.mark.parametrize("text,match", [
    ('[data]\nnme = "digits"', r"unknown key 'data.nme'"),
    ('[model]\nname = "resnet"', r"model.name = 'resnet' is not allowed; .*'logreg'"),
    ("[client]\nlr = -1", r"client.lr = -1.0: must be a number greater than 0"),
    ("[client]\nbatch_size = 0", r"client.batch_size = 0: must be an integer of at least 1"),
    ('[client]\nbatch_size = "half"', r"client.batch_size = 'half' is not allowed; input should be 'full'"),
    ("rounds = 0", r"rounds = 0: must be an integer of at least 1"),
    ('[strategy]\nweighting = "size"', r"aggregator.weighting = 'size' is not allowed"),
    ("[stop]\ntarget_accuracy = 2", r"stop.target_accuracy = 2.0: must be in \(0.0, 1.0\]"),
    ('[sim]\nexecutor = "gpu"', r"sim.executor = 'gpu' is not allowed; .*'vectorized'"),
    ("[sim]\nworkers = 0", r"sim.workers = 0: must be an integer of at least 1"),
    ('[strategy]\nname = "fedprox"\nmu = -1', r"strategy.mu = -1.0: must be in \[0.0, inf\)"),
    ("[strategy]\nclients_per_round = 0", r"strategy.clients_per_round = 0: must be an integer of at least 1"),
    ('[strategy]\nname = "fedadam"\n[server_opt]\nname = "sgd"',
     r"server_opt.name = 'sgd': fedadam's server step is Adam"),
    ('[server_opt]\nname = "adam"\nmomentum = 0.9', r"server_opt.momentum does not apply to server_opt.name = 'adam'"),
    ('[server_opt]\nname = "yogi"\nbeta2 = 1.0', r"server_opt.beta2 = 1.0: must be in \[0.0, 1.0\)"),
    ('[server_opt]\nname = "rmsprop"', r"server_opt.name = 'rmsprop' is not allowed; .*'adam'"),
    ("[strategy]\nserver_lr = 0.5\n[server_opt]\nlr = 0.5", r"strategy.server_lr and server_opt.lr are one setting"),
    ('[[transforms]]\nname = "clip"\nmax_norm = 0', r"transforms\[0\].max_norm = 0.0: must be a number greater than 0"),
    ('[[transforms]]\nname = "clip"\nwhere = "both"', r"transforms.0.where = 'both' is not allowed"),
    ('[[transforms]]\nmax_norm = 1', r"transforms.0.name is required"),
    ("[server]\nmin_updates = 0", r"server.min_updates = 0: must be an integer of at least 1"),
])
def test_bad_values_name_key_value_and_rule(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match) as err:
        load_config(write(tmp_path, text))
    assert "c.toml" in str(err.value)


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="nope.toml: config file not found"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "rounds = = 3"))


def test_set_overrides_are_typed_and_validated(tmp_path):
    cfg = load_config(None, ["rounds=7", "client.lr=0.2", "strategy.name=fedsgd", "client.batch_size=full",
                             "eval.federated=false"])
    assert cfg.rounds == 7 and cfg.client.lr == 0.2 and cfg.strategy.name == "fedsgd"
    assert cfg.client.batch_size == "full" and cfg.eval.federated is False
    with pytest.raises(ConfigError, match="unknown key 'client.lrr'"):
        load_config(None, ["client.lrr=0.1"])
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_config(None, ["client.lr"])
    with pytest.raises(ConfigError, match="rounds = 'many'"):
        load_config(None, ["rounds=many"])


def test_resolved_config_round_trips_through_toml(tmp_path):
    cfg = load_config(None, ["stop.target_accuracy=0.9", "data.path=/tmp/a \"b\""])
    again = load_config(write(tmp_path, to_toml(cfg)))
    assert again == cfg
    assert tomllib.loads(to_toml(cfg))["stop"]["target_accuracy"] == 0.9


def test_the_parts_sections_take_their_defaults_from_the_dataclasses():
    """One source of defaults: the config's sections are the API's dataclasses' defaults."""
    import dataclasses

    from fedloop import SGD, FedAvg, LocalSGD, RunOptions, Sampler, SimOptions, WeightedMean
    from fedloop.build import run_options, server_options, simulation_policy, strategy_from_config
    from fedloop.server_options import ServerOptions

    cfg = load_config()
    assert strategy_from_config(cfg) == FedAvg()
    assert FedAvg() == FedAvg(sampler=Sampler(), local=LocalSGD(), aggregator=WeightedMean(), server_opt=SGD())
    assert run_options(cfg) == RunOptions()
    assert cfg.sim.model_dump() == dataclasses.asdict(SimOptions())
    # round_deadline unset: the server's default (120 s) in a deployment, none in a simulation
    assert cfg.server.model_dump() == {**dataclasses.asdict(ServerOptions()), "round_deadline": None}
    assert server_options(cfg) == ServerOptions() and simulation_policy(cfg).round_deadline is None
    assert cfg.client.model_dump() == dataclasses.asdict(LocalSGD())


@pytest.mark.parametrize("shorthand,optimizer,values", [
    ("fedadam", "adam", {"lr": 0.01, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3}),
    ("fedyogi", "yogi", {"lr": 0.01, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3}),
    ("fedadagrad", "adagrad", {"lr": 0.1, "beta1": 0.9, "tau": 1e-3}),
    ("fedavgm", "sgd", {"lr": 1.0, "momentum": 0.9, "nesterov": False}),
])
def test_adaptive_strategies_by_shorthand_or_by_server_optimizer(tmp_path, shorthand, optimizer, values):
    from fedloop.build import strategy_from_config

    short = load_config(write(tmp_path, f'[strategy]\nname = "{shorthand}"'))
    assert short.server_opt.model_dump(exclude_none=True) == {"name": optimizer, **values}
    assert strategy_from_config(short).name == shorthand
    explicit = load_config(None, [f"server_opt.name={optimizer}", *(f"server_opt.{k}={v}" for k, v in values.items())])
    assert strategy_from_config(explicit).server_opt == strategy_from_config(short).server_opt
    tuned = load_config(None, [f"strategy.name={shorthand}", "server_opt.lr=0.3"])
    assert strategy_from_config(tuned).server_opt.lr == 0.3
    assert load_config(write(tmp_path, to_toml(tuned))) == tuned  # the resolved config repeats the run


def test_configs_of_earlier_versions_keep_working(tmp_path):
    from fedloop.build import strategy_from_config

    cfg = load_config(write(tmp_path, '''
[strategy]
name = "fedavg"
clients_per_round = 5
server_lr = 0.5
server_momentum = 0.9
weighting = "uniform"
'''))
    strategy = strategy_from_config(cfg)
    assert (strategy.server_opt.lr, strategy.server_opt.momentum) == (0.5, 0.9)
    assert strategy.aggregator.weighting == "uniform" and strategy.sampler.clients_per_round == 5
    assert "server_lr" not in to_toml(cfg)  # the keys moved
    # a key of another strategy is refused, not dropped: mu is fedprox's
    with pytest.raises(ConfigError, match="strategy.mu = 0.01 does not apply to strategy.name = 'fedavg'"):
        load_config(write(tmp_path, '[strategy]\nname = "fedavg"\nmu = 0.01\n'))
    assert "mu = 0.01" in to_toml(load_config(write(tmp_path, '[strategy]\nname = "fedprox"\nmu = 0.01\n')))


def test_transforms_are_a_chain_in_order(tmp_path):
    from fedloop import Clip
    from fedloop.build import strategy_from_config

    cfg = load_config(write(tmp_path, '''
[[transforms]]
name = "clip"
max_norm = 2.0
[[transforms]]
name = "clip"
max_norm = 1.0
where = "server"
'''))
    assert strategy_from_config(cfg).transforms == (Clip(2.0, "client"), Clip(1.0, "server"))
    assert load_config(write(tmp_path, to_toml(cfg))) == cfg


def test_a_simulation_round_deadline_needs_workers_it_can_stop_waiting_for(tmp_path):
    from fedloop.build import check_runnable, simulation_policy

    cfg = load_config(overrides=["server.round_deadline=30"])
    assert simulation_policy(cfg).round_deadline == 30.0  # what `fedloop run` waits
    with pytest.raises(ConfigError, match=r"server.round_deadline = 30.0: a simulation can stop waiting for worker "
                                          r"processes or Ray actors, not for sim.executor = 'auto'"):
        check_runnable(cfg)
    check_runnable(cfg, resuming=True)  # a run directory of an earlier version: its config.toml held 120 s
    check_runnable(load_config(overrides=["server.round_deadline=30", "sim.executor=processes"]))
    check_runnable(load_config(overrides=["server.round_deadline=30", "sim.engine=ray"]))
