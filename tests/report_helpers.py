"""Lines that a test module adds to pytest's report (the fuzz and fault tests' tables)."""

from __future__ import annotations

import contextlib


def say(config, lines) -> None:
    """Write ``lines`` to the test report, also without ``-s`` (capture suspended meanwhile)."""
    tr = config.pluginmanager.getplugin("terminalreporter")
    cap = config.pluginmanager.getplugin("capturemanager")
    with cap.global_and_fixture_disabled() if cap else contextlib.nullcontext():
        for line in lines:
            tr.write_line(line) if tr else print(line)
