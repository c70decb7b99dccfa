"""The README says nothing the repository contradicts: its paths exist, its config block is the defaults, and its
server keys are the server's."""

import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest

from fedloop.build import resolve, validate
from fedloop.cli import main
from fedloop.config import Config

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def toml_blocks() -> list[str]:
    return re.findall(r"```toml\n(.*?)```", README, flags=re.S)


def test_every_path_the_readme_names_is_in_the_repository():
    named = set(re.findall(r"\b((?:examples|scripts|benchmarks|src|tests|\.ci)/[\w./-]*\w)", README))
    assert named, "the pattern finds the README's paths"
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, missing
    assert "../" not in README


def test_the_readmes_config_block_is_the_default_config():
    block = next(b for b in toml_blocks() if b.startswith("seed = 0"))
    # the strategy's own aggregator and server optimizer are filled in as a run's config.toml shows them
    assert resolve(validate(tomllib.loads(block), "README"), "README") == resolve(Config(), "defaults")


def test_the_readmes_server_block_is_the_default_server_section():
    block = next(b for b in toml_blocks() if b.startswith("[server]"))
    assert validate(tomllib.loads(block), "README").server == Config().server


def readme_command(start: str) -> list[str]:
    """The arguments of the README's shell command that starts with `start` (continuation lines joined)."""
    text = "\n".join(re.findall(r"```bash\n(.*?)```", README, flags=re.S)).replace("\\\n", " ")
    line = next(line for line in text.splitlines() if line.strip().startswith(start))
    return shlex.split(line.split("#")[0])[1:]


@pytest.mark.slow
def test_the_readmes_privacy_example_gives_a_useful_model(tmp_path):
    """The quick start of "Differential privacy", exactly as written: epsilon 4 is spent and the model learns."""
    args = readme_command("fedloop run --set privacy.mode=central")
    assert main([*args, "--out", str(tmp_path / "dp"), "--quiet"]) == 0
    summary = json.loads((tmp_path / "dp" / "summary.json").read_text())
    assert summary["epsilon"] == pytest.approx(4.0, abs=0.01) and summary["accuracy"] > 0.6, summary


def test_the_readme_promises_nothing_fedloop_has_built_as_still_to_come():
    for built in ("differential privacy", "robust aggregators"):
        for sentence in re.findall(r"[^.]*(?:not built yet|to come|a later issue)[^.]*\.", README, flags=re.I):
            assert built not in sentence.lower(), sentence
