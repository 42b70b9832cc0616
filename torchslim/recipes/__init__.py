"""Built-in recipes (YAML, package data) and the example data entry point they use."""
