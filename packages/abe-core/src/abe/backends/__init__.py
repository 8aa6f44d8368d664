"""Backends abe can load, grouped by kind."""
