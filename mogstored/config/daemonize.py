"""The ``--daemonize`` checks on paths (§1.5, steps 1-4), run while options are merged."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from mogstored.config.options import StartupError


def validate_daemonize(
    config_paths: Sequence[tuple[str, str | None]],
    merged_paths: Sequence[tuple[str, str | None]],
    environ: Mapping[str, str],
) -> None:
    """Refuse relative paths and a relative ``PATH`` when daemonising (§1.5, steps 1-4).

    A daemon runs in "/" and re-executes itself via ``PATH`` on SIGUSR2, so relative
    names would point elsewhere.  ``config_paths`` are (key, value) pairs in print order:
    each ``--config`` value followed by that file's ``pidfile`` and ``docroot``;
    ``merged_paths`` (the command-line/merged ``pidfile`` and ``docroot``) are only
    checked when none of those failed.  ``None`` values are skipped.  Raises
    StartupError carrying every line to print.
    """
    lines = _relative(config_paths) or _relative(merged_paths)
    path = environ.get("PATH")
    if path is None:
        raise StartupError("\n".join([*lines, "PATH environment must be set"]))
    offender = _relative_path_entry(path)
    if offender is not None:
        lines.append(f"PATH environment contains relative path: {offender}")
    if lines:
        lines.append("relative paths are incompatible with --daemonize and SIGUSR2 upgrades")
        raise StartupError("\n".join(lines))


def _relative(pairs: Sequence[tuple[str, str | None]]) -> list[str]:
    return [
        f"{key}={value} must use an absolute path"
        for key, value in pairs
        if value is not None and not value.startswith("/")
    ]


def _relative_path_entry(path: str) -> str | None:
    """The tail of PATH from its first relative entry (an empty entry counts), or None."""
    if path.endswith(":"):
        return path
    start = 0
    for entry in path.split(":"):
        if not entry.startswith("/"):
            return path[start:]
        start += len(entry) + 1
    return None
