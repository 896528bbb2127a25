"""Validating and resizing: is a body an image we keep, and at what size."""
