"""ihc: see docs/architecture.md."""
