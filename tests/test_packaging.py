"""environment.yml (conda) names every runtime dependency of pyproject.toml and installs geocanon itself."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

# PyPI name -> conda-forge name where they differ
CONDA_NAMES = {
    "torch": "pytorch",
    "torch-geometric": "pytorch_geometric",
    "torch-scatter": "pytorch_scatter",
    "torch-cluster": "pytorch_cluster",
    "tblite": "tblite-python",
}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0].lower()


def test_environment_yml_covers_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = {_name(d) for d in env["dependencies"] if isinstance(d, str)}
    required = [_name(r) for r in project["dependencies"]]
    required += [_name(r) for extra in ("fast", "molecules") for r in project["optional-dependencies"][extra]]
    missing = [r for r in required if CONDA_NAMES.get(r, r) not in conda]
    assert not missing, f"environment.yml lacks {missing}"
    pip_sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert pip_sections and any(line.strip() in ("-e .", ".") for line in pip_sections[0]), "pip section must install geocanon"
    assert "conda-forge" in env["channels"]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in readme and "bash scripts/test.sh" in ci
    assert "bash scripts/main.sh" in readme


def test_setup_installs_pinned_torch_first():
    env_sh = (ROOT / "scripts" / "env.sh").read_text()
    assert "torch==2.13.0" in env_sh and "GEOCANON_TORCH" in env_sh
    assert env_sh.index('pip install -q "$TORCH_REQ"') < env_sh.index("pip install -q -e")
    assert "libusb-1.0-0" in env_sh
