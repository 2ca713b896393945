"""``python -m modelhost``."""

from modelhost.cli import main

main()
