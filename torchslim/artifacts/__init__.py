"""Artifacts that carry their own story: one manifest per artifact, a versioned registry."""
