"""What every benchmark prints under its figures: the load average beside them (the machine is
shared) and the command that reproduces them."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Any


def print_provenance() -> None:
    load = os.getloadavg()
    print(f"\nload average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    script = Path(sys.argv[0]).resolve().relative_to(Path(__file__).resolve().parent.parent)
    print(f"reproduce: .venv/bin/python {script} {shlex.join(sys.argv[1:])}".rstrip())


def fmt(value: Any, spec: str) -> str:
    """A figure in `spec`, or '-' where it could not be measured."""
    return "-" if value is None else format(value, spec)
