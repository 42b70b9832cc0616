"""``python -m torchslim`` (and ``torchrun -m torchslim``) runs the command line."""

from torchslim.cli import main

if __name__ == "__main__":
    main()
