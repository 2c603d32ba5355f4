"""Subcommands for the background jobs (prune, sync), registered with service.cli."""
