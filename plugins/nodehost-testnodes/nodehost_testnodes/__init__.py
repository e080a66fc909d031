"""Node types that exercise nodehost: probes, fault injection, hostile nodes."""
