"""Which member names an archive may hold: relative, forward-slash, no ``..``."""

from __future__ import annotations

from modelhost.errors import ArchiveError

_MAX_NAME_CHARS = 255


def check_member_name(name: str) -> str:
    """Return ``name`` if it is a safe relative path inside an archive.

    Raises:
        ArchiveError: absolute paths, backslashes, drive letters, ``..`` or empty
            components, control characters or over-long names.
    """
    problem = None
    if not name or len(name) > _MAX_NAME_CHARS:
        problem = "empty or longer than 255 characters"
    elif any(ord(ch) < 32 for ch in name):
        problem = "contains control characters"
    elif name.startswith("/") or "\\" in name or (len(name) > 1 and name[1] == ":"):
        problem = "is absolute or uses backslashes"
    elif any(part in ("", ".", "..") for part in name.split("/")):
        problem = "has an empty, '.' or '..' component (path traversal)"
    if problem:
        raise ArchiveError(f"archive member {name!r} {problem}; refusing to open")
    return name
