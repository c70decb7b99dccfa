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
    ("[client]\nlr = -1", r"client.lr = -1: Input should be greater than 0"),
    ("[client]\nbatch_size = 0", r"client.batch_size = 0: .*positive integer or \"full\""),
    ("rounds = 0", r"rounds = 0: Input should be greater than or equal to 1"),
    ('[strategy]\nweighting = "size"', r"strategy.weighting = 'size' is not allowed"),
    ("[stop]\ntarget_accuracy = 2", r"stop.target_accuracy = 2"),
    ('[sim]\nexecutor = "gpu"', r"sim.executor = 'gpu' is not allowed; .*'vectorized'"),
    ("[sim]\nworkers = 0", r"sim.workers = 0: Input should be greater than or equal to 1"),
    ('[strategy]\nname = "fedprox"\nmu = -1', r"strategy.mu = -1"),
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
