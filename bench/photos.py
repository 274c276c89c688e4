"""Photos at 224 px: what encoded storage keeps on disk, and how fast the pipeline's training loop
runs on it against a bare PyTorch + torchvision loop over the same JPEG files.

    python bench/photos.py                     # 2,000 photos of 224x224, JPEG quality 90
    python bench/photos.py --images 400        # a quicker try

The photos are drawn here (smooth colour fields with texture and shapes, so they compress like photos
rather than like noise) and written as an imagefolder of JPEG files (quality 90). Storage: the folder
through `prepare`'s own writer (`tlpipe.data.shards.prepare_source`, storage encoded, image size 224:
a file at most 256 px on its shorter side is kept byte for byte), against the folder's bytes and
against raw uint8 pixels. Training: one epoch at a time of a small ResNet on 224 crops, the recipe
RandomResizedCrop + flip (`tlpipe.data.recipes.crop_flip`) in both, through the pipeline's loop
(`tlpipe.training.loops.train_classifier` on the prepared split: rows read from the Arrow files, decoded
and augmented in DataLoader workers under per-image seeds, AdamW with its warmup-cosine schedule) and
through a bare loop (files opened by path, `torchvision.io.decode_image`, the same transform, a shuffled
DataLoader with the same workers, AdamW). The two alternate; the medians of `--repeats` epochs are
compared.
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


def store(folder: Path, out: Path) -> float:
    """The folder prepared as `prepare` writes a source (encoded, 224 px); returns the seconds it took."""
    from tlpipe.data import shards

    start = time.perf_counter()
    source = shards.Outside(str(folder), "train", "image", "label", image_size=224, channels=3, storage="encoded")
    shards.prepare_source(source, out, val_fraction=0.0, seed=0)
    return time.perf_counter() - start


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


class FileBytes:
    """The GPU-decoding bare loop's data set: each file's bytes (decoded in the main process, batched, on the GPU)."""

    def __init__(self, files):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        import torch

        path, label = self.files[i]
        return torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8), label


def bytes_batch(items):
    import torch

    return [data for data, _ in items], torch.tensor([label for _, label in items])


def build_model(kind: str, classes: int, seed: int):
    """`small` (a 2-stage ResNet of 16/32 channels, for a CPU) or `resnet50` (bottleneck blocks, 23.5M)."""
    import torch

    from tlpipe.training.models import Classifier, build_backbone

    torch.manual_seed(seed)
    if kind == "resnet50":
        backbone = build_backbone(in_channels=3, embedding_size=64, hidden_sizes=[256, 512, 1024, 2048],
                                  depths=[3, 4, 6, 3], layer_type="bottleneck")
    else:
        backbone = build_backbone(in_channels=3, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1])
    return Classifier(backbone, classes)


def bare_epoch(batches, model, optimizer, device) -> float:
    """One epoch of the bare loop (bf16 autocast and channels_last on CUDA, as the pipeline's); its images/s."""
    import torch
    import torch.nn.functional as F

    cuda = device.type == "cuda"
    model.train()
    seen, start = 0, time.perf_counter()
    for x, y in batches:
        x = x.to(device, non_blocking=True).float().mul_(2 / 255).sub_(1)  # as the pipeline scales a uint8 batch
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y.to(device, non_blocking=True))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(y)
    if cuda:
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def gpu_decoded(loader, transform, device):
    """Batches decoded by nvJPEG (`torchvision.io.decode_jpeg` of a list, on `device`), the transform per
    image on the GPU."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    for data, labels in loader:
        decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        yield torch.stack([transform(image) for image in decoded]), labels


def compare_training(files, split, *, device, model: str, classes: int, batch_size: int, workers: int,
                     repeats: int, gpu_decode: bool) -> dict[str, float]:
    """Median training images/s of the pipeline's loop and of the bare loops (CPU decoding in `workers`
    DataLoader workers; with `gpu_decode`, nvJPEG too), epochs alternating; same model, recipe, batch."""
    import os

    import torch

    from tlpipe.data import images, recipes
    from tlpipe.training.loops import train_classifier
    from tlpipe.training.runtime import prepare_module

    transform = recipes.crop_flip(224)
    read, labels = images.read(split)
    os.environ["TLPIPE_LOADER_WORKERS"] = str(workers)  # the loop's DataLoader workers
    pin = device.type == "cuda"
    common = dict(batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True, pin_memory=pin,
                  persistent_workers=workers > 0, prefetch_factor=4 if workers else None,
                  generator=torch.Generator().manual_seed(0))
    models = {name: prepare_module(build_model(model, classes, 0), device) for name in ("pipeline", "bare", "nvjpeg")}
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-3) for name, m in models.items()}
    bare_loader = torch.utils.data.DataLoader(FolderImages(files, transform), **common)
    bytes_loader = torch.utils.data.DataLoader(FileBytes(files), collate_fn=bytes_batch, **common)

    def pipeline(epoch: int) -> float:
        return train_classifier(models["pipeline"], read, labels, epochs=1, batch_size=batch_size, lr=1e-3,
                                weight_decay=0.0, seed=epoch, device=device, augment=transform)["images_per_s"]

    runs = {"pipeline": pipeline,
            "bare": lambda epoch: bare_epoch(bare_loader, models["bare"], optimizers["bare"], device)}
    if gpu_decode:
        runs["nvjpeg"] = lambda epoch: bare_epoch(gpu_decoded(bytes_loader, transform, device), models["nvjpeg"],
                                                  optimizers["nvjpeg"], device)
    speeds = {name: [] for name in runs}
    for fn in runs.values():  # workers started, allocator and kernels warm: not timed
        fn(0)
    for epoch in range(1, repeats + 1):
        for name in (list(runs) if epoch % 2 else list(runs)[::-1]):
            speeds[name].append(runs[name](epoch))
    return {name: statistics.median(values) for name, values in speeds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from tlpipe.data import decoded, storage

    with tempfile.TemporaryDirectory(prefix="tlpipe-photos-") as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        files = make_folder(tmp / "folder", args.images, args.classes)
        drawn = time.perf_counter() - started
        folder_bytes = sum(path.stat().st_size for path, _ in files)
        seconds = store(tmp / "folder", tmp / "prepared")
        split = storage.load_prepared(tmp / "prepared")["train"]
        stored_bytes = sum(f.stat().st_size for f in (tmp / "prepared").rglob("*") if f.is_file())
        raw_bytes = args.images * 3 * 224 * 224
        kept = {path.read_bytes() for path, _ in files}
        column = decoded.EncodedColumn([f["filename"] for f in split.cache_files], storage.IMAGE)
        same = sum(column[i] in kept for i in range(len(column)))
        print(f"{args.images} JPEG photos (224x224, quality 90) drawn in {drawn:.0f} s; folder {folder_bytes / 2**20:.1f} MiB "
              f"({folder_bytes / args.images / 1024:.1f} KiB/image)")
        print(f"encoded storage (prepare's writer): {stored_bytes / 2**20:.1f} MiB = {stored_bytes / folder_bytes:.3f}x "
              f"the folder ({same} of {args.images} files kept byte for byte), {args.images / seconds:.0f} images/s to prepare")
        print(f"raw uint8 pixels would take {raw_bytes / 2**20:.1f} MiB = {raw_bytes / folder_bytes:.2f}x the folder")
        per_image = stored_bytes / args.images
        print(f"1M images: {per_image * 1e6 / 1e9:.1f} GB encoded vs {3 * 224 * 224 * 1e6 / 1e9:.1f} GB raw; "
              f"preparing at this rate {1e6 / (args.images / seconds) / 60:.0f} min on this machine")
        speeds = compare_training(files, split, device=torch.device("cpu"), model="small", classes=args.classes,
                                  batch_size=args.batch_size, workers=args.workers, repeats=args.repeats,
                                  gpu_decode=False)
        ratio = speeds["pipeline"] / speeds["bare"]
        print(f"training at 224 px (RandomResizedCrop + flip), {args.workers} loader workers, batch {args.batch_size}, "
              f"{torch.get_num_threads()} threads: pipeline loop {speeds['pipeline']:.0f} img/s "
              f"vs bare torchvision loop {speeds['bare']:.0f} img/s = {ratio:.1%} "
              f"(medians of {args.repeats} alternating epochs; goal >= 90 %)")
        print(f"1M images: one training epoch at this rate {1e6 / speeds['pipeline'] / 3600:.1f} h on this CPU")


if __name__ == "__main__":
    main()
