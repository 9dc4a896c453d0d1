"""What code is running: the package's version, and the version a run records."""

from __future__ import annotations

import contextlib
import os
import subprocess
from functools import cache
from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    """The installed version of this package."""
    try:
        return version("egregora-database")
    except PackageNotFoundError:
        return "0+unknown"


@cache
def code_version() -> str:
    """The package version and, when the working directory is a git checkout, its commit."""
    installed = package_version()
    commit = os.environ.get("EGREGORA_CODE_COMMIT")
    if commit is None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(
                ["git", "rev-parse", "--short=12", "HEAD"],  # noqa: S607
                capture_output=True, text=True, timeout=2, check=False,
            )
            commit = done.stdout.strip() if done.returncode == 0 else None
    return f"{installed}+g{commit}" if commit else installed
