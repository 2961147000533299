"""The block processor (the blade's second processor): ``core.BlockProcessor`` ties together the
file processor's NBD server (``proxy``), the reconnecting NBD client pools to the controller
(``upstream``), a synchronous device adapter for the processor-info and program code
(``syncdev``) and the ``nasblade block-processor`` role (``main``).
"""
