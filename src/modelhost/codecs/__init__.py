"""Codecs: pure functions between wire payloads and numpy arrays."""
