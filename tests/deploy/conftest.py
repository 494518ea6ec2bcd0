"""Fixtures for the deployment tests: the test tools they need beyond the project's lock.

In CI (CI=true) a missing tool fails the run instead of skipping, so a green CI cannot hide a
missing install step. docs/deployment.md, "Testing the deployment", names the pins.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

TOOLS = {
    "helm_python": "helm-python-sdk==0.2.2 (Helm v4 engine, renders the chart)",
    "kubernetes_validate": "kubernetes-validate==1.37.0 (Kubernetes JSON schemas)",
}


def _require(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        why = f"{TOOLS[module]} is not installed"
        if os.environ.get("CI"):
            pytest.fail(f"{why}; CI must install it", pytrace=False)
        pytest.skip(why)
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def helm() -> ModuleType:
    return _require("helm_python")


@pytest.fixture(scope="session")
def kv() -> ModuleType:
    return _require("kubernetes_validate")
