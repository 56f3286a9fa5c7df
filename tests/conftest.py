"""Test-wide settings: offline model hubs, deterministic seeds, no GUI backend."""

from __future__ import annotations

import os

# Model hubs are unreachable in tests: fail fast instead of retrying for a minute.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
