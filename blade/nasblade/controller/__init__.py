"""The storage controller: devices and LUs (``layout``, ``array``), the block cache
(``cache``), the control store (``store``), the copy engine (``copyengine``), the NBD
front end (``nasblade.controller.nbdserver``), the control API (``api``) and its client
(``apiclient``). ``main`` is the ``nasblade controller`` entry point."""
