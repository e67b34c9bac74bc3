"""The repository's promises about itself: README's commands are what CI runs and name
things that exist; the architecture table lists every module; the license and changelog
ship with the version."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest

import numbasoftmax

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
CI = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
ACTIVATE = re.compile(r"^python3 -m venv (\S+) && \. \1/bin/activate && (.+)$")


def _readme_commands():
    block = README.split("```bash", 1)[1].split("```", 1)[0]
    lines = [line.strip() for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _split_setup(command):
    """(environment directory, the rest) of ``python3 -m venv D && . D/bin/activate && ...``"""
    match = ACTIVATE.match(command)
    assert match, f"README command does not start by creating and activating a venv: {command}"
    return match.group(1), match.group(2)


def _dirname(path):
    return path.removeprefix("./").rstrip("/")


def _ci_lines():
    return [line.strip() for line in CI.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def test_readme_starts_with_the_two_commands():
    main_job, tests = _readme_commands()
    assert _split_setup(main_job)[1].endswith("python -m numbasoftmax bench")
    assert "python -m pytest" in _split_setup(tests)[1]


def test_ci_runs_the_readme_test_command_in_its_own_environment():
    """CI runs README's test command (after README's environment set-up) right after making
    its environment in a directory of its own, and never touches README's; a failure of any
    command of that && list fails CI (set -e alone stops only at the list's last one)."""
    readme_env, command = _split_setup(_readme_commands()[1])
    lines = _ci_lines()
    assert command in lines
    at = lines.index(command)
    assert lines[at + 1:at + 2] == ['status=$?; [ "$status" -eq 0 ] || exit "$status"'] or (
        at == len(lines) - 1)
    # its environment is made right before it (the machine-code check has another one)
    ci_env = lines[at - 1].split()[3]
    assert lines[at - 1] == f"python3 -m venv {ci_env} && . {ci_env}/bin/activate"
    assert _dirname(ci_env) != _dirname(readme_env)
    assert f"rm -rf {ci_env}" in lines  # a fresh environment every run ...
    commands = "\n".join(lines)
    assert not re.search(rf"(?<![\w-]){re.escape(readme_env)}\b", commands)  # never README's
    ignored = (ROOT / ".gitignore").read_text().split()
    assert f"{_dirname(ci_env)}/" in ignored or f"/{_dirname(ci_env)}/" in ignored


def test_readme_commands_install_extras_that_exist():
    extras = set(PYPROJECT["project"]["optional-dependencies"])
    for command in _readme_commands():
        for word in shlex.split(command):
            match = re.fullmatch(r"(?:-e )?\.\[(\w+)\]", word)
            if match:
                assert match.group(1) in extras, (word, sorted(extras))


def test_readme_bench_options_exist():
    from numbasoftmax._bench.cli import _parser

    bench = _parser()._subparsers._group_actions[0].choices["bench"]
    known = {opt for action in bench._actions for opt in action.option_strings}
    section = README.split("## Performance", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`(--[a-z-]+)`", section))
    assert named and named <= known, sorted(named - known)


def _architecture_rows():
    table = README.split("## Architecture", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([^`]+)`", table, flags=re.M)


def test_architecture_table_lists_every_module():
    rows = _architecture_rows()
    listed = {r.rstrip("/") for r in rows}
    for path in sorted((ROOT / "numbasoftmax").glob("*")):
        if path.name in ("__init__.py", "__pycache__"):
            continue
        if path.suffix == ".py" or (path / "__init__.py").exists():
            assert f"numbasoftmax/{path.name}" in listed, f"{path.name} missing from README"
    for row in rows:
        assert (ROOT / row).exists(), f"README's architecture table names {row}, not in the tree"


def test_license_file_matches_the_declared_license():
    assert PYPROJECT["project"]["license"] == "BSD-3-Clause"
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("BSD 3-Clause License")
    assert "Neither the name of the copyright holder" in text


def test_changelog_covers_the_current_version():
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    versions = re.findall(r"^## (\S+)", text, flags=re.M)
    assert numbasoftmax.__version__ in versions
    assert versions[0] in ("Unreleased", numbasoftmax.__version__)


@pytest.mark.parametrize("extra", ["cuda12", "cuda13", "test", "ptx"])
def test_numpy_cap_only_where_numba_cuda_is(extra):
    deps = PYPROJECT["project"]["optional-dependencies"][extra]
    assert any(d.startswith("numba-cuda") for d in deps)
    assert "numpy<2.5" in deps


def test_core_dependencies_do_not_cap_numpy():
    numpy = [d for d in PYPROJECT["project"]["dependencies"] if d.startswith("numpy")]
    assert numpy and "<" not in numpy[0]
