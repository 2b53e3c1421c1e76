"""torchvision 0.19's VGG16, ResNet50 and InceptionV3 with random weights: the reference the Rust
chapter backbones must match for the same weights and input.

    python3 tests/data/torchvision_reference.py OUT_DIR

Writes OUT_DIR/<name>.safetensors (the state dict, batch-norm statistics randomised too, so that
they are checked) and OUT_DIR/<name>.io.safetensors (input, logits, features).
"""

import sys
from pathlib import Path

import torch
import torchvision
from safetensors.torch import save_file

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)

nets = {
    "vgg16": (torchvision.models.vgg16(weights=None), 224),
    "resnet50": (torchvision.models.resnet50(weights=None), 224),
    "inception_v3": (torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=True, transform_input=False), 299),
}
for name, (net, size) in nets.items():
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    net.eval()
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        logits = net(images)
        if name == "vgg16":
            features = net.classifier[:5](torch.flatten(net.avgpool(net.features(images)), 1))
        else:
            fc, net.fc = net.fc, torch.nn.Identity()
            features = net(images)
            net.fc = fc
    state = {k: v.contiguous() for k, v in net.state_dict().items() if v.is_floating_point()}
    save_file(state, str(out / f"{name}.safetensors"))
    save_file({"input": images, "logits": logits.contiguous(), "features": features.contiguous()}, str(out / f"{name}.io.safetensors"))
    print(name, tuple(logits.shape), tuple(features.shape))
