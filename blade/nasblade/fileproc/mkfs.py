"""``nasblade mkfs DEVICE``: create an empty file system (see ``nasblade.fileproc.tools``)."""

from nasblade.fileproc.tools import add_mkfs_arguments as add_arguments
from nasblade.fileproc.tools import run_mkfs as run

__all__ = ["add_arguments", "run"]
