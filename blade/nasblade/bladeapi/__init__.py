"""The blade side's HTTP clients, and the wire of the file processor's lifeline.

- ``http``: ``JSONClient``, the one client base (TCP or Unix socket, bearer token, JSON bodies,
  errors by status) every client of a nasblade HTTP API uses, the controller's included
  (``nasblade.controller.apiclient``).
- ``client``: ``BladeClient`` (the blade management API, served by ``nasblade.blockproc.api``
  and ``nasblade.cluster.api``), ``LocalClient`` (the block processor's local API) and
  ``FPControlClient`` (the file processor's control socket, ``nasblade.fileproc.agent``).
- ``chassis``: ``ChassisClient`` (the chassis of ``nasblade up``, ``nasblade.standalone.chassis``).
- ``lifeline``: the connection whose end tells the block processor its file processor is gone.
"""
