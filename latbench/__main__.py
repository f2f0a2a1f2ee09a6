import sys

from latbench._cli import main

sys.exit(main())
