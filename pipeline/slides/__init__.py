"""slides: see docs/architecture.md."""
