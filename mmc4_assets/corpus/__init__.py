"""Corpus logic for mmc4: pure Python, no Dagster imports, usable from scripts and tests."""
