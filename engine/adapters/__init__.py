"""Reversible adapters with fixed verbs (attach / prepare / set_step / detach) on diffusers models.

`standin`: Stand-In reference attention on Wan transformers (weights loading, reference preparation, attach).
"""
