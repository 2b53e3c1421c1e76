"""The python baseline of `lookalike bench --only index`: torchvision's VGG16, ResNet50 and
InceptionV3 (the chapter profile), eager mode, batch 1, embedding the same image files with the
same preprocessing (PIL decode, antialiased resize, centre crop, ImageNet normalisation) and the
same weights as lookalike, on the same device and in batches of the size lookalike uses there
(1 on the CPU, 64 on a GPU, the usual torchvision loop: PIL and transforms on the CPU, a
stacked batch to the device, features back to the host).

    python3 index_baseline.py WEIGHTS_DIR THREADS DEVICE BATCH IMAGE...

Writes WEIGHTS_DIR/{vgg16,resnet50,inception_v3}.safetensors (random, seed 0) when they are
missing, for lookalike to load, then prints one JSON line: {"images": N, "seconds": S,
"per_image_ms": [...]}: S to embed all images in batches of BATCH; per image, decode,
preprocessing and the three forward passes of that image alone (a query).
"""

import json
import sys
import time
from pathlib import Path

import torch
import torchvision
from PIL import Image
from safetensors.torch import load_file, save_file
from torchvision import transforms

weights, threads, device, batch, paths = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5:]
torch.set_num_threads(threads)
torch.manual_seed(0)
nets = {
    "vgg16": torchvision.models.vgg16(weights=None),
    "resnet50": torchvision.models.resnet50(weights=None),
    "inception_v3": torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=False),
}
weights.mkdir(parents=True, exist_ok=True)
for name, net in nets.items():
    path = weights / f"{name}.safetensors"
    if path.exists():
        net.load_state_dict(load_file(str(path)), strict=False)
    else:
        save_file({k: v.contiguous() for k, v in net.state_dict().items() if v.is_floating_point()}, str(path))
    net.eval().to(device)
nets["resnet50"].fc = torch.nn.Identity()
nets["inception_v3"].fc = torch.nn.Identity()
vgg = nets["vgg16"]


def vgg_features(x):
    return vgg.classifier[:5](torch.flatten(vgg.avgpool(vgg.features(x)), 1))


normalise = transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
pipelines = [
    (transforms.Compose([transforms.Resize(256, antialias=True), transforms.CenterCrop(224), transforms.ToTensor(), normalise]), vgg_features),
    (transforms.Compose([transforms.Resize(256, antialias=True), transforms.CenterCrop(224), transforms.ToTensor(), normalise]), nets["resnet50"]),
    (transforms.Compose([transforms.Resize(342, antialias=True), transforms.CenterCrop(299), transforms.ToTensor(), normalise]), nets["inception_v3"]),
]


def embed(batch_paths):
    images = [Image.open(path).convert("RGB") for path in batch_paths]
    # .cpu() waits for the device, as lookalike's copy of the features back to the host does.
    return [forward(torch.stack([preprocess(image) for image in images]).to(device)).cpu() for preprocess, forward in pipelines]


def timed(batch_paths):
    begun = time.perf_counter()
    embed(batch_paths)
    return (time.perf_counter() - begun) * 1000.0


with torch.no_grad():
    embed(paths[:batch])  # warm-up, as lookalike warms up before timing
    if batch == 1:
        started = time.perf_counter()
        per_image = [timed([path]) for path in paths]
        seconds = time.perf_counter() - started
    else:
        per_image = [timed([path]) for path in paths[:64]]
        started = time.perf_counter()
        for first in range(0, len(paths), batch):
            embed(paths[first : first + batch])
        seconds = time.perf_counter() - started
print(json.dumps({"images": len(paths), "seconds": seconds, "per_image_ms": per_image}))
