"""`torchslim llm ...` commands."""
