"""``python -m space_config deploy …``: see :mod:`space_config.deploy`."""
import sys

from space_config.deploy import main

sys.exit(main())
