import sys

from latbench.cli.main import main

sys.exit(main())
