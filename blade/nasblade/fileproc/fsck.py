"""``nasblade fsck DEVICE``: check a file system (see ``nasblade.fileproc.tools``)."""

from nasblade.fileproc.tools import add_fsck_arguments as add_arguments
from nasblade.fileproc.tools import run_fsck as run

__all__ = ["add_arguments", "run"]
