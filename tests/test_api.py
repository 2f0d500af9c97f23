"""The public API re-exported from ``gradproj``: every name resolves to its layer's object."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import gradproj


@pytest.mark.parametrize("name", [n for n in gradproj.__all__ if n != "__version__"])
def test_every_public_name_is_its_modules_object(name):
    module = importlib.import_module(gradproj._WHERE[name])
    assert getattr(gradproj, name) is getattr(module, name)
    assert not name.startswith("_")


def test_unknown_names_raise_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        gradproj.nope  # noqa: B018


def test_import_gradproj_does_not_import_torch():
    code = "import sys, gradproj; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
