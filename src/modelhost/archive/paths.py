"""Which member names an archive may hold: relative, forward-slash, no ``..``."""

from __future__ import annotations

from modelhost.errors import ArchiveError

_MAX_NAME_CHARS = 255
_MAX_COMPONENT_BYTES = 255  # NAME_MAX of Linux and macOS file systems, in UTF-8 bytes


def check_member_name(name: str) -> str:
    """Return ``name`` if it is a safe relative path inside an archive.

    Raises:
        ArchiveError: absolute paths, backslashes, drive letters, ``..`` or empty
            components, control characters, characters UTF-8 cannot encode (lone
            surrogates), over-long names or components over 255 UTF-8 bytes.
    """
    problem = None
    if not name or len(name) > _MAX_NAME_CHARS:
        problem = "empty or longer than 255 characters"
    elif any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        problem = "contains control characters"
    elif any(0xD800 <= ord(ch) <= 0xDFFF for ch in name):
        problem = "contains lone surrogates (not encodable as UTF-8)"
    elif name.startswith("/") or "\\" in name or (len(name) > 1 and name[1] == ":"):
        problem = "is absolute or uses backslashes"
    elif any(part in ("", ".", "..") for part in name.split("/")):
        problem = "has an empty, '.' or '..' component (path traversal)"
    elif any(len(part.encode()) > _MAX_COMPONENT_BYTES for part in name.split("/")):
        problem = f"has a component over {_MAX_COMPONENT_BYTES} UTF-8 bytes"
    if problem:
        raise ArchiveError(f"archive member {name!r} {problem}; refusing to open")
    return name
