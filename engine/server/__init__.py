"""The on-prem HTTP server (extra `serve`): the character library, batch jobs and their outputs for a studio team.

`engine.server.app.create_app(engine, store=..., token=..., host=...)` builds the FastAPI app; `flx serve`
(`engine.cli.serve`) runs it with uvicorn. FastAPI, Starlette and uvicorn are imported only when an app is built,
never by importing this package. See docs/server.md.
"""
