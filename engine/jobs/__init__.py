"""Batch jobs: job files (`specs`), the SQLite job store (`store`), the runner (`runner`) and the worker loop
(`worker`). The CLI (`flx batch`), the server and the Ray driver all go through these, over one `Engine`."""
