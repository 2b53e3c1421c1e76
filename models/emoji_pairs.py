"""Writes the instance-retrieval benchmark of `lookalike eval --retrieval`: the same emoji drawn
twice, independently, by Apple (the catalogue) and by Facebook (the queries), from the npm
packages emoji-datasource-apple and emoji-datasource-facebook 16.0.0 (MIT; images (c) Apple and
Meta, used here as a test set only).

    python3 models/emoji_pairs.py OUT [--items N] [--positives VENDOR]

OUT/catalogue/<category>/<code point>.png and OUT/queries/<category>/<code point>.png, one pair
per emoji that both vendors draw, in emoji.json's categories less "Flags" and "Component" (flags
are rectangles of the same few colours, components are not pictures). With --items N, N pairs
spread evenly over the list (a fixed choice, the same on every machine). With --positives
VENDOR (google or twitter), also OUT/positives/<category>/<code point>.png, that third vendor's
drawing of each catalogue emoji it draws: training pairs for `lookalike train --positives`,
never seen by the queries. Idempotent.
"""

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

VERSION = "16.0.0"
CACHE = Path(__file__).resolve().parent / "cache" / "emoji"


def package(vendor: str) -> Path:
    """The vendor's npm tarball, downloaded once into models/cache/emoji."""
    CACHE.mkdir(parents=True, exist_ok=True)
    tarball = CACHE / f"emoji-datasource-{vendor}-{VERSION}.tgz"
    if not tarball.exists():
        subprocess.run(["npm", "pack", "--silent", f"emoji-datasource-{vendor}@{VERSION}"], cwd=CACHE, check=True, stdout=subprocess.DEVNULL)
    return tarball


def main() -> None:
    out = Path(sys.argv[1])
    items = int(sys.argv[sys.argv.index("--items") + 1]) if "--items" in sys.argv else None
    third = sys.argv[sys.argv.index("--positives") + 1] if "--positives" in sys.argv else None
    apple, facebook = tarfile.open(package("apple")), tarfile.open(package("facebook"))
    sources = [("catalogue", apple, "apple"), ("queries", facebook, "facebook")]
    if third is not None:
        sources.append(("positives", tarfile.open(package(third)), third))
    emoji = json.load(apple.extractfile("package/emoji.json"))
    pairs = [e for e in emoji if e.get("has_img_apple") and e.get("has_img_facebook") and e["category"] not in ("Flags", "Component")]
    pairs.sort(key=lambda e: e["sort_order"])
    if items is not None and items < len(pairs):
        pairs = [pairs[round(i * len(pairs) / items)] for i in range(items)]
    written = 0
    for entry in pairs:
        category = entry["category"].lower().replace(" & ", "-").replace(" ", "-")
        for split, tar, vendor in sources:
            target = out / split / category / entry["image"]
            if target.exists() or not entry.get(f"has_img_{vendor}"):
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(f"package/img/{vendor}/64/{entry['image']}") as source, open(target, "wb") as sink:
                shutil.copyfileobj(source, sink)
            written += 1
    print(f"{len(pairs)} emoji pairs in {out} ({written} images written)")


if __name__ == "__main__":
    main()
