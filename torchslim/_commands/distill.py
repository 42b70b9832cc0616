"""`torchslim distill ...` commands."""
