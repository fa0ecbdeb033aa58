"""Command line: thin adapters over `engine.api`. Each module is one command group."""
