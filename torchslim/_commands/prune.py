"""`torchslim prune ...` commands."""
