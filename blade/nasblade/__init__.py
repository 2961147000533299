"""nasblade: the data plane of a disk array of NAS blades.

The package is organised by the parts of the invention (see docs/architecture.md, which draws
the layers ``.importlinter`` checks; top first):

- ``nasblade.terminal``   -- the management terminal: ``nasblade status|takeover|giveback|backup|
                             map|events|watch|software|cluster``, ``kubectl nas``.
- ``nasblade.cli``        -- the ``nasblade`` console entry point; one subcommand per role or tool.
- ``nasblade.standalone`` -- ``nasblade up``: a controller and the blades as local processes, the
                             supervisor and the chassis (power fencing, restarts), rollouts.
- ``nasblade.cluster``    -- cluster groups inside the block processor: liveness, takeover with
                             fencing, area failover, backups; the ``block-processor`` role (``role``).
- ``nasblade.blockproc``  -- the blade's block processor: NBD to the controller, processor
                             information, software fetch, the blade management and local APIs.
- ``nasblade.fileproc``   -- the blade's file processor: NFSv3/MOUNT/portmap, NLM/NSM, mkfs/fsck,
                             its blade program (``agent``) and fail-stop device.
- ``nasblade.controller`` -- the storage device control unit: devices, LUs, cache memory, control
                             store ("shared memory"), copy engine, NBD front end, control API and
                             its clients.
- ``nasblade.program``    -- the program LU: catalog of blade software bundles, install, boot shim.
- ``nasblade.nfs``        -- the NFS-side RPC programs (NFSv3, MOUNT, portmapper, locks).
- ``nasblade.devices``    -- opening a block device by URL.
- ``nasblade.procinfo``   -- processor-information formats: records, the group portions and slots.
- ``nasblade.fs``         -- the nasblade file system on one block device.
- ``nasblade.rpc``        -- sans-I/O ONC RPC with XDR codecs.
- ``nasblade.nbd``        -- the NBD wire protocol (sans-I/O), the client, TLS and LU access; the
                             "connection unit".
- ``nasblade.bladeapi``   -- the blade side's HTTP client base and the clients of the blade and
                             chassis APIs; the file processor's lifeline.
- ``nasblade.httpjson``, ``nasblade.ready``, ``nasblade.units``, ``nasblade.lunames`` -- bounded
                             JSON bodies, readiness lines, sizes and durations, the LU names.
- ``nasblade.blockdev``   -- the synchronous block-device interface the file system is written to.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
