"""TUI tests: make the helpers (tui_helpers) and test doubles (tui_fakes) in this folder importable."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
