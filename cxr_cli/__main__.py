import sys

from cxr_cli.main import main

sys.exit(main())
