"""HTTP frontends: thin adapters between wire formats and the engine."""

from modelhost.api.app import build_app

__all__ = ["build_app"]
