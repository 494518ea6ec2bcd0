"""Fixtures for tests/certs. The builders live in certs_support.py; this directory is put on
sys.path so test modules can import it by name without making tests/ a package (other test
directories have modules with the same basenames)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from certs_support import echo_server, good_ca, good_server

__all__ = ["echo_server", "good_ca", "good_server"]
