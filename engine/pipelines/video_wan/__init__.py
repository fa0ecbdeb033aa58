"""Identity-conditioned Wan video on diffusers' own pipelines: Stand-In reference attention (`reference`)."""
