"""Program storage and boot (claim 12): the program LU's catalog of versioned, checksummed blade
software bundles (``catalog``), building a bundle from this project's own code (``bundle``),
installing a verified bundle where the boot shim finds it (``install``), the boot shim itself
(``boot``, the ``nasblade boot`` role) and the ``nasblade software`` management commands
(``software``).
"""
