"""Provenance of benchmark results: the commit and its -dirty mark, and the atomic JSON + Markdown files."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from geocanon.bench.results import provenance, write_results


def _git(repo: Path, *args: str) -> str:
    command = ["git", "-c", "user.name=test", "-c", "user.email=test@example.org", *args]
    return subprocess.run(command, cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git repository with code, a config, a result and a checkpoint committed; the working directory."""
    _git(tmp_path, "init", "-q")
    for name in ("geocanon/model.py", "benchmarks/run.yaml", "benchmarks/results/run.json", "benchmarks/checkpoints/run.pt"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("first\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "first")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_commit_is_dirty_for_code_and_configs_not_for_the_runs_own_outputs(repo: Path) -> None:
    head = _git(repo, "rev-parse", "HEAD")
    assert provenance()["commit"] == head
    # what a run writes before its provenance (results, checkpoints) leaves the code at HEAD
    (repo / "benchmarks/results/run.json").write_text("rewritten\n")
    (repo / "benchmarks/checkpoints/run.pt").write_text("rewritten\n")
    assert provenance()["commit"] == head
    # a changed config or module is not the committed code
    for name in ("benchmarks/run.yaml", "geocanon/model.py"):
        (repo / name).write_text("changed\n")
        assert provenance()["commit"] == head + "-dirty", name
        _git(repo, "checkout", "--", name)
    assert provenance()["commit"] == head
    # from a subfolder too: the whole repository counts and the excluded folders are the repository's
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(repo / "geocanon")
        assert provenance()["commit"] == head  # the rewritten results and checkpoint still do not count
        (repo / "benchmarks/run.yaml").write_text("changed\n")  # outside the working directory
        assert provenance()["commit"] == head + "-dirty"


def test_without_git_the_caller_states_the_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # no repository above tmp_path is found
    monkeypatch.setenv("GEOCANON_COMMIT", "abc123")
    assert provenance()["commit"] == "abc123"


def test_results_files_carry_the_provenance(tmp_path: Path) -> None:
    meta = provenance(12.5, [0, 1])
    json_path, md_path = write_results(tmp_path / "out" / "run", {"value": 1.0, "provenance": meta}, "# Title\n")
    assert json.loads(json_path.read_text()) == {"value": 1.0, "provenance": meta}
    text = md_path.read_text()
    assert text.startswith("# Title") and f"- **commit**: `{meta['commit']}`" in text and "- **wall_time_s**: `12.5`" in text
    assert "versions" not in text and not list((tmp_path / "out").glob(".*tmp"))
