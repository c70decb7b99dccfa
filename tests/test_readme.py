"""The README says nothing the repository contradicts: its paths exist, its config block is the defaults, and its
server keys are the server's."""

import re
import tomllib
from pathlib import Path

from fedloop.build import resolve
from fedloop.config import Config, validate

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
