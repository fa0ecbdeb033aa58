"""Lowest layer: errors, settings, small utilities. Imports nothing from the rest of `engine`."""
