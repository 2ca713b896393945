"""Helpers shared by the tests: a real server process, archives built for tests."""
