"""Reproducible training entry points; each writes a file into nets/weights/ and its sha256."""
