"""Naming and storing: safe file names, files on disk and the status row of each image."""
