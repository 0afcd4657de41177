"""``python -m abstain`` (and ``torchrun -m abstain``) runs the CLI."""
import sys

from .cli import main

sys.exit(main())
