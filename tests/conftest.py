"""Shared fixtures. Tests run on CPU in float32 unless a test says otherwise."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
