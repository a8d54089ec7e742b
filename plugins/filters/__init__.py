"""Built-in filter plugins, registered lazily (listing them imports no torch), and ``bench review``, the manual
filter's command."""

from harness import hookimpl
from plugins.filters.manual import add_review_command


@hookimpl
def register_filters(register):
    register("none", "plugins.filters.none:NoFilter")
    register("random", "plugins.filters.random:RandomFilter")
    register("uncertainty", "plugins.filters.uncertainty:Uncertainty")
    register("clip", "plugins.filters.clip:ClipFilter")
    register("manual", "plugins.filters.manual:ManualFilter")


@hookimpl
def register_commands(app):
    add_review_command(app)
