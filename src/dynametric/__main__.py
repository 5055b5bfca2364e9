import sys

from dynametric.cli import main

sys.exit(main())
