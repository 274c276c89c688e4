"""Photos at 224 px: what encoded storage keeps on disk, and how fast the decoding input path trains
against a bare PyTorch + torchvision loop over the same JPEG files.

    python bench/photos.py                     # 2,000 photos of 224x224, JPEG quality 90
    python bench/photos.py --images 400        # a quicker try

The photos are drawn here (smooth colour fields with texture and shapes, so they compress like photos
rather than like noise) and written as an imagefolder of JPEG files (quality 90). Storage: every file
through `tlpipe.data.encoding.encode` (max side 256, as prepared for 224 training) into one Arrow file
with a `datasets` Image column, against the folder's bytes and against raw uint8 pixels. Training: one
epoch of a small ResNet on 224 crops (the supervised recipe of `tlpipe.data.recipes`: RandomResizedCrop,
flip, normalisation) with the images decoded in DataLoader workers, as `tlpipe.data.decoded` does it
(per-image seeds, (epoch, row) sampler, the bytes read from the Arrow file) and as a bare loop does it
(files opened by path, `torchvision.io.decode_image`, the same transforms, a shuffled sampler); the
two alternate, and the medians of `--repeats` epochs are compared. Both use the same model, batch size,
worker count and optimiser.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import _stages  # noqa: E402,F401  (offline and quiet, before the Hugging Face libraries load)


def draw_photo(rng, size: int):
    """A 224x224 RGB picture: a colour gradient, a few filled ellipses and rectangles, grain."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    y, x = np.mgrid[0:size, 0:size] / size
    colours = rng.uniform(0, 255, (2, 3))
    base = colours[0] * (1 - x[..., None]) + colours[1] * y[..., None]
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(3, 8)):
        box = sorted(rng.uniform(0, size, 2)), sorted(rng.uniform(0, size, 2))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([box[0][0], box[1][0], box[0][1], box[1][1]], fill=tuple(int(c) for c in rng.uniform(0, 255, 3)))
    image = image.filter(ImageFilter.GaussianBlur(1.2))
    grain = rng.normal(0, 6, (size, size, 3))
    return Image.fromarray(np.clip(np.asarray(image) + grain, 0, 255).astype(np.uint8))


def make_folder(root: Path, images: int, classes: int, size: int = 224, seed: int = 0) -> list[tuple[Path, int]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    files = []
    for i in range(images):
        label = i % classes
        path = root / f"class_{label:02d}" / f"{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        draw_photo(rng, size).save(path, "JPEG", quality=90)
        files.append((path, label))
    return files


def store(files: list[tuple[Path, int]], arrow: Path, max_side: int) -> tuple[float, int]:
    """Encodes every file into one Arrow file (datasets' writer, an Image column); (seconds, files kept as they were)."""
    import datasets
    from datasets.arrow_writer import ArrowWriter

    from tlpipe.data import encoding

    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    start, kept = time.perf_counter(), 0
    writer = ArrowWriter(features=features, path=str(arrow))
    try:
        for begin in range(0, len(files), 256):
            rows = [(encoding.encode(path.read_bytes(), max_side=max_side), label) for path, label in files[begin:begin + 256]]
            kept += sum(stored.kept for stored, _ in rows)
            writer.write_batch({"image": [{"bytes": stored.data, "path": None} for stored, _ in rows],
                                "label": [label for _, label in rows]})
        writer.finalize()
    finally:
        writer.close()
    return time.perf_counter() - start, kept


class FolderImages:
    """The bare loop's data set: a file path per row, read and decoded, then the transform."""

    def __init__(self, files, transform):
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        import torch
        from torchvision.io import ImageReadMode, decode_image

        path, label = self.files[i]
        data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
        return self.transform(decode_image(data, mode=ImageReadMode.RGB)), label


def model_and_optimizer(classes: int, seed: int):
    import torch
    import transformers

    from tlpipe.training.models import Classifier

    torch.manual_seed(seed)
    backbone = transformers.AutoModel.from_config(transformers.ResNetConfig(
        num_channels=3, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic"))
    model = Classifier(backbone, classes)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def train_epoch(batches, model, optimizer) -> tuple[int, float]:
    import torch.nn.functional as F

    model.train()
    seen, start = 0, time.perf_counter()
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(y)
    return seen, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import numpy as np
    import torch

    from tlpipe.data import decoded, recipes

    with tempfile.TemporaryDirectory(prefix="tlpipe-photos-") as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        files = make_folder(tmp / "folder", args.images, args.classes)
        drawn = time.perf_counter() - started
        folder_bytes = sum(path.stat().st_size for path, _ in files)
        arrow = tmp / "train.arrow"
        seconds, kept = store(files, arrow, max_side=256)
        stored_bytes, raw_bytes = arrow.stat().st_size, args.images * 3 * 224 * 224
        print(f"{args.images} JPEG photos (224x224, quality 90) drawn in {drawn:.0f} s; folder {folder_bytes / 2**20:.1f} MiB "
              f"({folder_bytes / args.images / 1024:.1f} KiB/image)")
        print(f"encoded storage: {stored_bytes / 2**20:.1f} MiB = {stored_bytes / folder_bytes:.3f}x the folder "
              f"({kept} of {args.images} files kept byte for byte), {args.images / seconds:.0f} images/s to store")
        print(f"raw uint8 pixels would take {raw_bytes / 2**20:.1f} MiB = {raw_bytes / folder_bytes:.2f}x the folder")
        per_image = stored_bytes / args.images
        print(f"1M images: {per_image * 1e6 / 1e9:.1f} GB encoded vs {3 * 224 * 224 * 1e6 / 1e9:.1f} GB raw; "
              f"storing at this rate {1e6 / (args.images / seconds) / 60:.0f} min on this machine's one process")

        transform = recipes.supervised(224)
        labels = np.array([label for _, label in files])
        ours_set = decoded.EncodedImages(decoded.EncodedColumn([str(arrow)]), labels, [transform], seed=0)
        order = decoded.EpochOrder(len(ours_set), seed=0)
        ours_loader = decoded.loader(ours_set, batch_size=args.batch_size, order=order, workers=args.workers, drop_last=True)
        bare_loader = torch.utils.data.DataLoader(
            FolderImages(files, transform), batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
            drop_last=True, persistent_workers=args.workers > 0, prefetch_factor=4 if args.workers else None,
            multiprocessing_context="spawn" if args.workers else None, generator=torch.Generator().manual_seed(0))
        ours_model, ours_opt = model_and_optimizer(args.classes, 0)
        bare_model, bare_opt = model_and_optimizer(args.classes, 0)
        speeds = {"ours": [], "bare": []}

        def ours(epoch: int) -> float:
            order.set_epoch(epoch)
            n, s = train_epoch(((x, y) for x, y in ours_loader), ours_model, ours_opt)
            return n / s

        def bare(epoch: int) -> float:
            n, s = train_epoch(bare_loader, bare_model, bare_opt)
            return n / s

        ours(0), bare(0)  # workers started, allocator warm: not timed
        for epoch in range(1, args.repeats + 1):
            for name, fn in (("ours", ours), ("bare", bare)) if epoch % 2 else (("bare", bare), ("ours", ours)):
                speeds[name].append(fn(epoch))
        ratio = statistics.median(speeds["ours"]) / statistics.median(speeds["bare"])
        print(f"training at 224 px, {args.workers} loader workers, batch {args.batch_size}, "
              f"{torch.get_num_threads()} threads: decoded input path {statistics.median(speeds['ours']):.0f} img/s "
              f"vs bare torchvision loop {statistics.median(speeds['bare']):.0f} img/s = {ratio:.1%} "
              f"(medians of {args.repeats} alternating epochs; goal >= 90 %)")


if __name__ == "__main__":
    main()
