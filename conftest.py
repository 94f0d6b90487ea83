"""The project's pytest wiring lives in the harness's own plugin (harness/pytestplugin.py)."""

pytest_plugins = ("harness.pytestplugin",)
