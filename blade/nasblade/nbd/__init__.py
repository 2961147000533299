"""NBD for nasblade: the sans-I/O protocol core (``proto``), a synchronous, thread-safe client
(``client``) that implements ``nasblade.blockdev.BlockDevice``, TLS credentials (``tls``,
``pki``) and the per-group LU access rule (``access``). The controller's asyncio server is
``nasblade.controller.nbdserver``."""
