"""Helpers for the test suites (lit and pytest)."""
