"""The blade's HTTP surfaces, served by its block processor.

- ``server.blade_app``: the blade management API (TCP, ``Authorization: Bearer <token>``) for
  the operator and the CLI: status, LU and file-system takeover/release, backups.
- ``server.local_app``: the file processor's private API on a Unix socket inside the pod:
  store my status in my slot (claim 2), read the controller's load (claim 19).
- ``client``: synchronous clients (``BladeClient``, ``LocalClient``, and ``FPControlClient``
  for the file processor's control socket).
- ``agent``: ``nasblade blade-file-processor``, the file-processor side of the blade (embeds
  ``nasblade.fileproc.server.FileProcessor``, heartbeats through the local API, serves the
  control socket the block processor uses to add and remove file systems).
"""
