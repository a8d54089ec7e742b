"""Built-in classifier plugins, registered lazily (listing them imports no torch)."""

from harness.hookspecs import hookimpl


@hookimpl
def register_classifiers(register):
    register("lenet", "plugins.classifiers.lenet:LeNet")
    register("timm:", "plugins.classifiers.timm_models:TimmClassifier")
    # the paper's zoo (Zhang et al.): LeNet above, then
    register("alexnet", "plugins.classifiers.torchvision_models:AlexNet")
    register("vgg19", "plugins.classifiers.timm_models:VGG19")
    register("resnet50", "plugins.classifiers.timm_models:ResNet50")
    register("mobilenet-v3", "plugins.classifiers.timm_models:MobileNetV3")
    register("deit-s", "plugins.classifiers.timm_models:DeiTSmall")
