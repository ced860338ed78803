"""Test-suite settings: under CI, hypothesis runs derandomized, so a submission's CI
run is reproducible and a rare example found by chance cannot block a landing; local
runs keep exploring new examples."""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")
