"""Built-in plugins. Each kind's package registers its plugins lazily through the ``bench`` entry points."""
