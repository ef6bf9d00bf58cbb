"""Child processes that start something at the same moment: each prints ``ready`` when set up
and waits for a line on stdin; all get ``go`` at once. Always reaped, also when a test fails."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def run_together(argvs: Sequence[Sequence[str]], cwd: Path, timeout: float, **popen: Any) -> list[str]:
    """Run ``python -c`` children (``argvs``: the arguments after ``-c``), release them together
    once every one said ``ready``, and return their stdout; each must exit 0."""
    children = [subprocess.Popen([sys.executable, "-c", *argv], cwd=cwd, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True, **popen) for argv in argvs]
    try:
        for child in children:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        outputs = [child.communicate(timeout=timeout)[0] for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert [child.returncode for child in children] == [0] * len(children)
    return outputs
