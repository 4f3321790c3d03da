"""Fixtures live in fixtures.py so the legacy-SDK suite can share them."""

from fixtures import ADMIN_KEY, URL, admin, paddock  # noqa: F401
