"""Built-in generator plugins, registered lazily (listing them imports no torch)."""

from harness.hookspecs import hookimpl


@hookimpl
def register_generators(register):
    register("dcgan", "plugins.generators.dcgan:DCGAN")
    register("ddpm", "plugins.generators.ddpm:DDPM")
    register("replay", "plugins.generators.replay:Replay")
    register("sd15-lora", "plugins.generators.sd15_lora:SD15LoRA")
    register("vae", "plugins.generators.vae:ConditionalVAE")
