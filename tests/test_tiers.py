"""The test tiers are chosen from what a test uses: a child process puts it in the `large` tier."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

from conftest import LARGE_FIXTURES, child_process_functions

SOURCE = textwrap.dedent('''
    import subprocess, sys
    import pytest

    def _run(*args):
        return subprocess.run([sys.executable, *args], check=False)

    def _cli(*args):
        return _run("-m", "ghostface_keras", *args)

    @pytest.fixture
    def server():
        return _cli("serve")

    def test_direct():
        subprocess.run(["true"])

    def test_through_two_helpers():
        _cli("--help")

    def test_through_a_fixture(server):
        assert server

    def test_executable_only():
        assert sys.executable

    def test_in_process(capsys):
        assert capsys
''')


def test_child_processes_are_found_directly_through_helpers_and_through_fixtures():
    spawning = child_process_functions(SOURCE)
    assert spawning == {"_run", "_cli", "server", "test_direct", "test_through_two_helpers",
                        "test_through_a_fixture", "test_executable_only"}


def test_the_real_size_fixtures_exist():
    # a renamed fixture would silently move its tests back to the default tier
    defined = set()
    for path in Path(__file__).parent.glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and any("fixture" in ast.unparse(d) for d in node.decorator_list):
                defined.add(node.name)
    assert LARGE_FIXTURES <= defined
