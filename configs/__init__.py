"""The configs fastload ships, installed with it as the package ``fastload.configs``.

pyproject.toml maps that package onto this folder (one copy of each file, editable install or wheel), so
``augment="default"`` or ``fastload bench --config default`` finds them from any working directory
(`fastload.yamlio.shipped_config`). A YAML file added here is shipped under its name.
"""
