import sys

from coworld.cli import main

sys.exit(main())
