"""The tools beside the two stages: the ``fastload`` command line and what only it runs.

``cli`` (the command table: it lists every command module), ``cache_commands`` (``fastload cache ...``),
``synth_command`` (``fastload synth``), ``show`` (``fastload show``) with ``picture`` (the grid it draws, pure
NumPy), ``demo`` (the whole path in one command), ``bench/`` (the benchmark and its peer loaders), ``loaders``
(the fastload loader a tool measures or draws). Tools import the library; nothing in the library imports a tool.
"""
