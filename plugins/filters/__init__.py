"""Built-in filter plugins, registered lazily (listing them imports no torch)."""

from harness.hookspecs import hookimpl


@hookimpl
def register_filters(register):
    register("none", "plugins.filters.none:NoFilter")
    register("random", "plugins.filters.random:RandomFilter")
    register("uncertainty", "plugins.filters.uncertainty:Uncertainty")
    register("clip", "plugins.filters.clip:ClipFilter")
    register("manual", "plugins.filters.manual:ManualFilter")
