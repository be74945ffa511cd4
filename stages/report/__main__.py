"""``python -m stages.report OUT --params … --inputs …``: the stage's command line (`stage.main`)."""

import sys

from .stage import main

if __name__ == "__main__":
    sys.exit(main())
