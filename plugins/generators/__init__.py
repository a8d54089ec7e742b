"""Built-in generator plugins, registered lazily (listing them imports no torch)."""

from harness.hookspecs import hookimpl


@hookimpl
def register_generators(register):
    register("dcgan", "plugins.generators.dcgan:DCGAN")
