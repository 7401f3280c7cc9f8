__version__ = "0.1.0"  # the package's one version source (pyproject.toml reads it)
