"""Replicated state on pycrdt. Imports nothing from `mesh` or `node`."""
