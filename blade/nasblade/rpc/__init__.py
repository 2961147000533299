"""Sans-I/O ONC RPC (RFC 5531) over TCP record marking, with XDR (RFC 4506) codecs.

``xdr`` declares wire types once (both directions come from the declaration), ``record``
splits a TCP byte stream into RPC records, ``message`` decodes calls and builds replies, and
``dispatch`` checks a call in protocol order and routes it through a table keyed by
``(program, version, procedure)``. The NFS, MOUNT and portmapper programs in
``nasblade.nfs`` plug into ``dispatch``; the asyncio shell in ``nasblade.fileproc.server``
feeds bytes in and writes the replies out.
"""
