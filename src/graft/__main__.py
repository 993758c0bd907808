"""`python -m graft ...`, the same as the `graft` command; also what `accelerate launch -m graft train
...` starts in every process."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
