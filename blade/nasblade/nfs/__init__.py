"""NFS-side RPC programs of the file processor.

``types`` declares the NFSv3 (RFC 1813) and MOUNT v3 wire types once; ``handles`` mints and
verifies file handles; ``exports`` holds the export table (CIDR allow-lists, ro/rw, squashing);
``nfs3``, ``mount`` and ``portmap`` are the RPC programs registered with
``nasblade.rpc.dispatch.Dispatcher`` by the server in ``nasblade.fileproc.server``.
"""
