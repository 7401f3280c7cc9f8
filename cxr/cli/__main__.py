import sys

from cxr.cli.main import main

sys.exit(main())
