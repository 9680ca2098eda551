"""`python -m icm_engine.cli ...`, the same as the `icm` script."""
import sys

from .entry import main

if __name__ == "__main__":  # walking the package (tests do) imports this module without running it
    sys.exit(main())
