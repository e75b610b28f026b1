"""`core.memory.keep_freed_memory`: the malloc settings that the training command makes (issue #28)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ghostface_keras.core import memory

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings are Linux-only")


@linux
def test_glibc_takes_every_setting():
    assert memory.keep_freed_memory() is True
    assert memory.keep_freed_memory(arenas=2) is True


class _RecordingLibc:
    """A libc whose mallopt records its calls and answers `answer` (glibc: 1 taken, 0 refused)."""

    calls: list = []
    answer = 1

    def __init__(self, *args, **kwargs):
        pass

    def mallopt(self, parameter, value):
        type(self).calls.append((parameter.value, value.value))
        return type(self).answer


def test_the_settings_that_reach_mallopt_and_a_refusal(monkeypatch):
    monkeypatch.setattr(memory.ctypes, "CDLL", _RecordingLibc)
    monkeypatch.setattr(memory.sys, "platform", "linux")
    _RecordingLibc.calls, _RecordingLibc.answer = [], 1
    assert memory.keep_freed_memory(arenas=3) is True
    # glibc's malloc.h: M_TRIM_THRESHOLD -1, M_TOP_PAD -2, M_MMAP_THRESHOLD -3, M_ARENA_MAX -8
    assert _RecordingLibc.calls == [(-1, 1 << 30), (-2, 64 << 20), (-3, 32 << 20), (-8, 3)]
    _RecordingLibc.answer = 0
    assert memory.keep_freed_memory() is False


def test_without_glibc_it_does_nothing_and_says_so(monkeypatch):
    class NoMallopt:
        def __init__(self, *args, **kwargs):
            pass

    monkeypatch.setattr(memory.ctypes, "CDLL", NoMallopt)
    monkeypatch.setattr(memory.sys, "platform", "linux")
    assert memory.keep_freed_memory() is False
    monkeypatch.setattr(memory.sys, "platform", "darwin")
    assert memory.keep_freed_memory() is False


def test_the_training_command_sets_it_before_the_backend_loads():
    text = (Path(memory.__file__).parents[1] / "cli" / "train.py").read_text()
    assert text.index("keep_freed_memory()") < text.index("import_backend_quietly()\n    from")
