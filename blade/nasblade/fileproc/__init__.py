"""The file processor role: serve nasblade file systems over NFSv3 (and the mkfs/fsck tools).

``config`` parses the export configuration, ``server`` holds ``FileProcessor`` (the
embeddable asyncio server: add/remove file systems at run time, one listener set per file
system), ``main`` is ``nasblade file-processor``, and ``tools`` holds ``nasblade mkfs`` and
``nasblade fsck``.
"""
