"""`python -m dasp` is the `dasp` command."""
import sys

from dasp.cli import main

sys.exit(main())
