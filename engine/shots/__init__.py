"""Shots: one request each (a still; later packs, clips and sequences), validated once and run over the Engine."""
