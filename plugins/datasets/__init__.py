"""Built-in dataset plugins, registered lazily (listing them imports no torch)."""

from harness.hookspecs import hookimpl


@hookimpl
def register_datasets(register):
    register("colored-mnist", "plugins.datasets.colored_mnist:ColoredMNIST")
    register("colored-mnist-wyllie", "plugins.datasets.colored_mnist:ColoredMNISTWyllie")
    register("colored-svhn", "plugins.datasets.colored_svhn:ColoredSVHN")
    register("celeba", "plugins.datasets.celeba:CelebA")
    register("fairface", "plugins.datasets.fairface:FairFace")
    register("cifar20", "plugins.datasets.cifar:CIFAR20")
    register("cifar100", "plugins.datasets.cifar:CIFAR100")
    register("hard-imagenet", "plugins.datasets.hard_imagenet:HardImageNet")
    register("breeds", "plugins.datasets.breeds:Breeds")
