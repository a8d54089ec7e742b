"""Built-in experiment trackers (``bench run --tracker NAME``), registered lazily: listing them imports none of
their libraries, which are optional (``pip install -e '.[track]'``)."""

from harness.hookspecs import hookimpl


@hookimpl
def register_trackers(register):
    register("mlflow", "plugins.trackers.mlflow_tracker:MLflowTracker")
    register("tensorboard", "plugins.trackers.tensorboard_tracker:TensorBoardTracker")
    register("wandb", "plugins.trackers.wandb_tracker:WandbTracker")
