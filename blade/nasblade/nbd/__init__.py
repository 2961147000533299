"""NBD for nasblade: the sans-I/O protocol core (``proto``), the asyncio server shell the
controller uses (``server``) and a synchronous, thread-safe client (``client``) that
implements ``nasblade.blockdev.BlockDevice``."""
