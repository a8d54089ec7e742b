"""A tiny but real class-conditional generator: per-class pixel mean and standard deviation, Gaussian samples."""

import torch

from harness import Generator, Options


class ClassMeanOptions(Options):
    noise: float = 1.0


class ClassMean(Generator):
    Options = ClassMeanOptions
    instances = 0  # counted so tests can check the loop re-creates the generator every generation

    def __init__(self, options, **kwargs):
        super().__init__(options, **kwargs)
        type(self).instances += 1
        shape = (self.num_classes, self.channels, self.image_size, self.image_size)
        self.mean = torch.zeros(shape)
        self.std = torch.zeros(shape)
        self.fitted = False

    def fit(self, data):
        assert not self.fitted, "a generator is trained once, from scratch"
        x = data.images.float()
        for c in range(self.num_classes):
            sel = x[data.labels == c]
            if len(sel):
                self.mean[c], self.std[c] = sel.mean(0), sel.std(0, unbiased=False)
        self.fitted = True
        return {"images_seen": len(data), "train_size": len(data)}

    def sample(self, labels):
        noise = torch.randn((len(labels), *self.mean.shape[1:])) * self.options.noise
        x = self.mean[labels] + noise * self.std[labels]
        return x.round().clamp(0, 255).to(torch.uint8)

    def state_dict(self):
        return {"mean": self.mean, "std": self.std}

    def load_state_dict(self, state):
        self.mean, self.std = state["mean"].clone(), state["std"].clone()
