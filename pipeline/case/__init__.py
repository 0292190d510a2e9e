"""case: see docs/architecture.md."""
