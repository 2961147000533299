"""The standalone array (``nasblade up``): a controller and N blades as local processes.

``config`` parses and validates the YAML configuration (errors name the field path);
``array`` starts, supervises and stops the processes; ``main`` is the ``nasblade up`` role.
"""
