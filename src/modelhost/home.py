"""The modelhost home (``~/.modelhost``): created private, refused when others can write it.

The home holds the management token, the SQLite registry and the archive store. Someone who
can write it can plant a token or swap archives; someone who can read it can read the token.
So, like ssh with ``~/.ssh``:

- a new home is created with mode 0700;
- a home owned by another user, or writable by group or others, is refused (fix: ``chmod
  700`` it, or choose another ``--home``);
- a home only readable by group or others is repaired to 0700, with a warning.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from modelhost.errors import ConfigError

_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH
_OTHERS_ANY = stat.S_IRWXG | stat.S_IRWXO


def prepare_home(home: Path) -> list[str]:
    """Create ``home`` (0700) or check an existing one; return warnings to print.

    Raises:
        ConfigError: ``home`` is not a directory, belongs to another user, or can be
            written by group or others.
    """
    try:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = home.lstat()
    except OSError as exc:
        raise ConfigError(f"cannot use the modelhost home {home}: {exc.strerror}") from exc
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"the modelhost home {home} is not a directory (a link or a file)")
    if info.st_uid != os.geteuid():
        raise ConfigError(
            f"the modelhost home {home} belongs to uid {info.st_uid}, not to you; "
            "use a home of your own (--home or MODELHOST_HOME)"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & _OTHERS_WRITE:
        raise ConfigError(
            f"the modelhost home {home} is writable by others (mode {mode:04o}), so its token "
            f"and archives cannot be trusted; run: chmod 700 {home}"
        )
    if mode & _OTHERS_ANY:
        try:
            home.chmod(mode & ~_OTHERS_ANY)
        except OSError as exc:
            raise ConfigError(f"cannot make {home} private: {exc.strerror}") from exc
        return [
            f"the modelhost home {home} was readable by others (mode {mode:04o}); "
            "removed their access"
        ]
    return []
