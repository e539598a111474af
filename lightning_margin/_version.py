"""The package version, in a module of its own: code inside the package reads it without importing the package root.

``pyproject.toml`` reads it from here too (``[tool.setuptools.dynamic]``), so it is written once.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
