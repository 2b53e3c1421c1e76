"""open_clip 3.3.0's ViT-B-32 with random weights: the reference the Rust CLIP port (image tower,
text tower, BPE tokenizer and eval preprocessing) must match for the same weights and input.

    python3 tests/data/open_clip_reference.py OUT_DIR

Writes OUT_DIR/clip.safetensors (the state dict under open_clip's own key names; LayerNorms and
attention biases perturbed, since a fresh init leaves them at 1 and 0), OUT_DIR/images/0..4.png
(deterministic RGB pictures of several sizes) and OUT_DIR/reference.safetensors: pixels (the
preprocessed PNGs), image_embeddings, tokens (of clip_sentences.txt, int64), text_embeddings
(both L2-normalised).
"""

import sys
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image
from safetensors.torch import save_file

out = Path(sys.argv[1])
(out / "images").mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)

model = open_clip.create_model("ViT-B-32", pretrained=None)
model.eval()
with torch.no_grad():
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.weight.uniform_(0.8, 1.2)
            module.bias.uniform_(-0.1, 0.1)
        if isinstance(module, torch.nn.MultiheadAttention):
            module.in_proj_bias.uniform_(-0.05, 0.05)
            module.out_proj.bias.uniform_(-0.05, 0.05)
state = {k: v.float().contiguous() for k, v in model.state_dict().items() if v.is_floating_point()}
save_file(state, str(out / "clip.safetensors"))

# Smooth gradients, a few filled shapes and some noise, so the resize and crop matter.
rng = np.random.default_rng(0)
images = []
for i, (w, h) in enumerate([(224, 224), (300, 200), (200, 300), (640, 480), (97, 150)]):
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([255 * x / w, 255 * y / h, 127.5 + 127.5 * np.sin((x + y) / (7 + 3 * i))], axis=-1)
    for _ in range(4):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.05, 0.3) * min(w, h)
        colour = rng.uniform(0, 255, 3)
        if rng.random() < 0.5:
            img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = colour
        else:
            img[(abs(x - cx) < r) & (abs(y - cy) < r / 2)] = colour
    img += rng.normal(0, 12, img.shape)
    path = out / "images" / f"{i}.png"
    Image.fromarray(np.clip(img, 0, 255).round().astype(np.uint8), "RGB").save(path)
    images.append(Image.open(path))

preprocess = open_clip.image_transform(model.visual.image_size, is_train=False)
pixels = torch.stack([preprocess(img) for img in images])

text = (Path(__file__).parent / "clip_sentences.txt").read_text(encoding="utf-8")
sentences = text.removesuffix("\n").split("\n")
tokens = open_clip.get_tokenizer("ViT-B-32")(sentences)

with torch.no_grad():
    image_embeddings = model.encode_image(pixels, normalize=True)
    text_embeddings = model.encode_text(tokens, normalize=True)

save_file({
    "pixels": pixels.contiguous(),
    "image_embeddings": image_embeddings.contiguous(),
    "tokens": tokens.to(torch.int64).contiguous(),
    "text_embeddings": text_embeddings.contiguous(),
}, str(out / "reference.safetensors"))
print("state dict", len(state), "tensors; pixels", tuple(pixels.shape), "tokens", tuple(tokens.shape),
      "text", tuple(text_embeddings.shape))
