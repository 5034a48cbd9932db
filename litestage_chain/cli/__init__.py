"""The `litestage` command: `ask` (the reasoning chain), `profile` (the offline search) and `bench` (the baselines)."""

from litestage_chain.cli.main import main

__all__ = ["main"]
