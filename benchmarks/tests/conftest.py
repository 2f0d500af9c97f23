"""The tiny-model fixtures of the package's tests, shared with the harness's tests."""

from tests.conftest import *  # noqa: F401,F403
