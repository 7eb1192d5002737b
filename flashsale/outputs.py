"""Files flashsale leaves behind (reports, CSVs): written whole or not at all.

A report cut short by a full disk is worse than none: it parses as a run that had less in it.
Each file is written beside its destination and renamed into place, so a reader sees the old
file, the new one, or nothing; a failed write removes its temporary file and raises one
OutputError naming the path and the reason (exit code 4, never taken for a failed check).
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

from flashsale.errors import OutputError

# A rehearsal writes ~0.2 MB of reports plus its processes' logs: refuse to start with less
# free than this in its run directory rather than find out at the end.
MIN_FREE_BYTES = 1 << 20
EXIT_OUTPUT = OutputError.exit_code


def write_text(path: Path, text: str, *, newline: str | None = None) -> None:
    """Write text to path atomically (see the module docstring)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as error:
        raise OutputError(f"cannot write {path}: {reason(error)}") from error
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline=newline) as out:
            out.write(text)
        os.replace(temporary, path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {reason(error)}") from error


def check_room(directory: Path, needed: int = MIN_FREE_BYTES) -> None:
    """Refuse to start a run whose directory cannot hold its reports and logs."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(directory).free
    except OSError as error:
        raise OutputError(f"cannot use {directory}: {reason(error)}") from error
    if free < needed:
        raise OutputError(
            f"{directory} has {free // 1024} KiB free; a run needs at least "
            f"{needed // 1024} KiB for its logs and reports: free some space or choose another "
            "directory"
        )


def reason(error: OSError) -> str:
    """The short reason of an OSError ('No space left on device'), without its path."""
    if error.errno == errno.ENOSPC:
        return "no space left on device"
    return error.strerror or str(error)
