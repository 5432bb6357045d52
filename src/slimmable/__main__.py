import sys

from slimmable.cli import main

sys.exit(main())
