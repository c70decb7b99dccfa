"""requirements.lock: in step with pyproject.toml, and what this environment runs (scripts/setup.sh installs it)."""

import os
import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


def pins() -> dict[str, Version]:
    """name -> pinned version, from requirements.lock."""
    found = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if m := re.match(r"^([A-Za-z0-9._-]+)==([^\s;#]+)", line):
            found[canonicalize_name(m.group(1))] = Version(m.group(2))
    return found


def requirements() -> list[Requirement]:
    """fedloop's runtime requirements and those of the extras setup.sh installs (test, which holds ray)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in [*project["dependencies"], *project["optional-dependencies"]["test"],
                                     *project["optional-dependencies"]["ray"]]]


def test_the_lock_pins_every_requirement_of_pyproject_within_its_range():
    locked = pins()
    assert len(locked) > 30
    for req in requirements():
        name = canonicalize_name(req.name)
        if name == "torch":  # pinned by scripts/setup.sh, whose CPU build comes from its own index
            assert req.specifier.contains("2.13.0"), req
            assert "torch" not in locked
            continue
        assert name in locked, f"{req.name} is not in requirements.lock: run scripts/lock.sh"
        assert req.specifier.contains(locked[name], prereleases=True), \
            f"requirements.lock pins {req.name}=={locked[name]} outside pyproject.toml's {req}: run scripts/lock.sh"


@pytest.mark.skipif(bool(os.environ.get("FEDLOOP_UNLOCKED")), reason="scripts/test-latest.sh: the newest versions")
def test_this_environment_runs_the_locked_versions():
    """The tests run what the lock says (scripts/setup.sh installs it); a package at another version means the
    environment was not set up by setup.sh, and its results say nothing about the locked set."""
    wrong = []
    for name, version in pins().items():
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            wrong.append(f"{name} not installed (locked {version})")
            continue
        if installed != version:
            wrong.append(f"{name} {installed} (locked {version})")
    assert not wrong, "set up with bash scripts/setup.sh: " + "; ".join(wrong)
    assert Version(metadata.version("torch")).base_version == "2.13.0"
