import sys

from nst3d.cli import main

sys.exit(main())
