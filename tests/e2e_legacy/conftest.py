"""The e2e fixtures, for the suite that runs with a 2.45-era e2b SDK (its
own virtualenv: the SDK of that era creates and connects with the v1 routes)."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "e2e"))

from fixtures import ADMIN_KEY, URL, admin, paddock  # noqa: E402,F401
