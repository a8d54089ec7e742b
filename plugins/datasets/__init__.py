"""Built-in dataset plugins, registered lazily (listing them imports no torch)."""

from harness.hookspecs import hookimpl


@hookimpl
def register_datasets(register):
    register("colored-mnist", "plugins.datasets.colored_mnist:ColoredMNIST")
