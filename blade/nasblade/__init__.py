"""nasblade: the data plane of a disk array of NAS blades.

The package is organised by the parts of the invention (see docs/ and the design card):

- ``nasblade.nbd``        -- the NBD wire protocol (sans-I/O) and clients; the "connection unit".
- ``nasblade.controller`` -- the storage device control unit: devices, LUs, cache memory,
                             control store ("shared memory"), copy engine, control API.
- ``nasblade.blockdev``   -- the synchronous block-device interface the file system is written to.
- ``nasblade.cli``        -- the ``nasblade`` console entry point; one subcommand per role.

Other parts (file processor, block processor, standalone array) add themselves to the CLI's
role table in ``nasblade.cli``.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
