import sys

from cxr_cli import main

sys.exit(main())
