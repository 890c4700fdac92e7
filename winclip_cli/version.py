"""The package version: one place, read by the CLI, run manifests and the build."""

__version__ = "0.1.0"
