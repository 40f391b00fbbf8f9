import sys

from ifcn.cli import main

sys.exit(main())
