"""Pipelines: loading a preset's diffusers pipeline from verified local weights, and rendering.

`loading.load_pipeline` -> `LoadedPipeline`; `render.render_still` / `render.render_clip` run it
and return the result with its metadata. Heavy imports happen inside the functions.
"""
