"""Helpers shared by the tests (real tiny models, fakes of interfaces)."""
