"""A run's config: the rules every key must satisfy (``schema``), command-line overrides
(``command_line``) and experiment files (``files``)."""
