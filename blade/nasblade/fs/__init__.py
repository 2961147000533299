"""The nasblade file system: a crash-consistent POSIX-like file system on one block device.

``layout`` places the superblock, the metadata region (an SQLite database), its write-ahead
log and the data region on the LU; ``vfs`` maps SQLite's files onto those regions; ``fs``
implements the file operations NFSv3 needs (``FileSystem``) with extent-mapped data written
as large block I/O and metadata committed in groups; ``fsck`` checks a file system for
inconsistencies. The NFS layer (``nasblade.nfs.nfs3``) is the only caller of ``FileSystem``
in the server; ``nasblade mkfs`` / ``nasblade fsck`` (``nasblade.fileproc``) are the tools.
The design and its crash-safety argument are in docs/file-system.md.
"""
