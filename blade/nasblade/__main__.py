"""``python -m nasblade`` runs the same CLI as the ``nasblade`` console script."""

import sys

from nasblade import cli

sys.exit(cli.main())
