"""The CI example in docs/ stays valid: it parses, and the commands it runs are the harness's own."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from harness import cli

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / "docs" / "examples" / "migration-gate.yml"


def _commands() -> list[str]:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    assert workflow["jobs"], "the workflow defines no job"
    return [step["run"] for job in workflow["jobs"].values() for step in job["steps"] if "run" in step]


def test_the_example_workflow_parses_and_runs_the_gate() -> None:
    commands = _commands()
    assert any(c.startswith("pytest --migrate-plan ") and "--junitxml" in c for c in commands)
    assert any(c.startswith("harness lint --format github") for c in commands)


def test_the_harness_commands_of_the_example_are_accepted_by_the_cli() -> None:
    harness = [shlex.split(c)[1:] for c in _commands() if c.startswith("harness ")]
    assert harness
    for argv in harness:
        assert argv[0] in cli.COMMANDS, argv
        cli.build_parser(argv[0]).parse_args(argv)  # exits (SystemExit 2) on an unknown option


def test_docs_link_the_ci_guide() -> None:
    assert "docs/ci.md" in (ROOT / "README.md").read_text()
    assert "examples/migration-gate.yml" in (ROOT / "docs" / "ci.md").read_text()


def test_the_example_workflow_keeps_the_rehearsal_cache_between_runs() -> None:
    """The actions/cache step restores .harness/cache before the rehearsal and saves it after (its post step)."""
    steps = yaml.safe_load(WORKFLOW.read_text())["jobs"]["rehearse"]["steps"]
    names = [step.get("uses", "").split("@")[0] or step.get("run", "") for step in steps]
    cache = names.index("actions/cache")
    rehearse = next(i for i, n in enumerate(names) if n.startswith("pytest --migrate-plan "))
    assert cache < rehearse
    settings = steps[cache]["with"]
    assert settings["path"] == ".harness/cache"  # the default of a plan's rehearsal.cache
    assert "hashFiles('migrations/**'" in settings["key"]
    assert any(line.endswith("-main-") for line in settings["restore-keys"].split())
    assert "actions/cache" in (ROOT / "docs" / "ci.md").read_text()
