r"""``python -m captum_clip_surgery`` runs the ``clip-surgery`` command line."""

import sys

from captum_clip_surgery.cli import main

sys.exit(main())
