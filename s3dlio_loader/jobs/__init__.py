"""Runnable end-to-end jobs behind ``s3dlio-loader`` subcommands (``train``).

A job imports its framework when it runs, not when this package or the CLI is imported.
"""

from __future__ import annotations

__all__: list[str] = []
