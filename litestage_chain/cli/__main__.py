"""`python -m litestage_chain.cli`: the same as the `litestage` command."""

import sys

from litestage_chain.cli.main import main

sys.exit(main())
