"""Node types for pipeline validation tests: one manifest file per type."""
