"""The tools beside the two stages: the ``fastload`` command line and what only it runs.

``cli`` (the command table: it lists every command module), ``cache_commands`` (``fastload cache ...``),
``synth_command`` (``fastload synth``), ``show`` (the picture grid), ``demo`` (the whole path in one command),
``bench/`` (the benchmark and its peer loaders). Tools import the library; nothing in the library imports a tool.
"""
