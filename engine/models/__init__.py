"""Weights: the manifest (what exists), the store (what is on disk, locked and verified), fetch/import."""
