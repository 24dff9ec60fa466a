"""The vsmcp daemon: config, CLI, lifecycle, VSM systems, store, HTTP."""

__version__ = "0.1.0"
