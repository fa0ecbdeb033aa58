"""Identity-conditioned SDXL stills on diffusers' own pipelines: IP-Adapter-FaceID-Plus-v2 and InstantID."""
