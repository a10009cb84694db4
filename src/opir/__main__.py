import sys

from opir.cli import main

sys.exit(main())
