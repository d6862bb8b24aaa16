"""The package's version, at the bottom of the package: the package face (``gx.__version__``)
and the decision cache's key both import it from here (pyproject.toml says the same)."""

__version__ = "0.1.0"
