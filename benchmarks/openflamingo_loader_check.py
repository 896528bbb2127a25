"""Feed training tars to OpenFlamingo's own mmc4 loader, on the CPU, with nothing downloaded.

Why: the test suite checks every field `preprocess_interleaved` reads without torch; this runs
the real thing. It imports `open_flamingo/train/data.py` from an OpenFlamingo checkout (its
`tarfile_to_samples_nothrow`, `preprocess_interleaved`, `get_mmc4_dataset`), with a tokenizer
and an image transform built here (a word-level tokenizer trained on the samples' own text, with
OpenFlamingo's special tokens; a CLIP-style resize/crop/normalize), since no weights exist here.

    benchmarks/setup_openflamingo.sh --loader PATH_TO_OPEN_FLAMINGO_CHECKOUT    # once
    .bench/openflamingo-loader-venv/bin/python benchmarks/openflamingo_loader_check.py \\
        --tars 'data/webdataset/42-{000..000}.tar'

It fails (exit 1) on any error other than the ValueErrors by which `preprocess_interleaved`
rejects a sample on purpose (no image above its 10 KB floor or the similarity threshold, a
single image by its 50% coin), and prints what happened to every sample.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHECKOUT = ROOT / ".bench" / "open_flamingo"
SPECIAL = ["<|endofchunk|>", "<image>"]
# The ValueErrors preprocess_interleaved raises to drop a sample; anything else is a bug.
EXPECTED_REJECTIONS = ("No images in sample", "Fewer than", "Only one image")


def build_tokenizer(texts: list[str]):
    """A word-level tokenizer trained on ``texts``, set up as OpenFlamingo's factory sets up its
    text tokenizer (eos, pad, and the <|endofchunk|> / <image> special tokens)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel(unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["<unk>", "<|endoftext|>"])
    words.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=words, unk_token="<unk>", eos_token="<|endoftext|>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL})
    tokenizer.add_special_tokens({"pad_token": "<PAD>"})
    return tokenizer


def build_image_processor(size: int = 224):
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(
                (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
            ),
        ]
    )


def check_samples(of_data, samples, tokenizer, image_processor, args):
    """preprocess_interleaved on every sample: outcomes counted, unexpected errors listed."""
    import torch

    outcomes: Counter = Counter()
    failures = []
    torch.manual_seed(0)
    for sample in samples:
        try:
            images, (input_ids, attention_mask) = of_data.preprocess_interleaved(
                sample,
                tokenizer=tokenizer,
                clip_processor=image_processor,
                sim_threshold=args.sim_threshold,
                min_num_images=1,
                max_num_images=args.max_images,
            )
        except ValueError as exc:
            reason = next((r for r in EXPECTED_REJECTIONS if str(exc).startswith(r)), None)
            if reason is None:
                failures.append(repr(exc))
            outcomes[f"rejected: {reason or exc}"] += 1
            continue
        except Exception as exc:  # noqa: BLE001 - any other error means the format is wrong
            failures.append(repr(exc))
            outcomes["error"] += 1
            continue
        assert images.shape == (args.max_images, 3, 224, 224), images.shape
        assert input_ids.shape == attention_mask.shape == (1, 256), input_ids.shape
        image_id = tokenizer.additional_special_tokens_ids[
            tokenizer.additional_special_tokens.index("<image>")
        ]
        outcomes["accepted"] += 1
        outcomes["image tokens"] += int((input_ids == image_id).sum())
    return outcomes, failures


def check_loader(of_data, args, image_processor, tokenizer, accepted: int):
    """The whole get_mmc4_dataset pipeline, one epoch through its WebLoader: batches seen."""
    import torch

    loader_args = argparse.Namespace(
        mmc4_shards=args.tars,
        dataset_resampled=False,
        train_num_samples_mmc4=max(args.batch_size, accepted // 2),
        seed=42,
        batch_size_mmc4=args.batch_size,
        workers=1,
        world_size=1,
        mmc4_textsim_threshold=args.sim_threshold,
        mmc4_min_num_images=1,
        mmc4_max_num_images=args.max_images,
    )
    info = of_data.get_mmc4_dataset(loader_args, image_processor, tokenizer)
    batches = 0
    for batch in info.dataloader:  # unpacked as open_flamingo/train/train_utils.py does
        images = batch[0]
        input_ids = torch.stack([x[0] for x in batch[1]]).squeeze(1)
        attention_mask = torch.stack([x[1] for x in batch[1]]).squeeze(1)
        assert images.shape == (args.batch_size, args.max_images, 3, 224, 224), images.shape
        assert input_ids.shape == attention_mask.shape == (args.batch_size, 256), input_ids.shape
        batches += 1
    return batches, info.dataloader.num_batches


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tars", required=True, help="brace pattern, as --mmc4_shards takes")
    parser.add_argument("--open-flamingo", type=Path, default=DEFAULT_CHECKOUT)
    parser.add_argument("--sim-threshold", type=float, default=0.0)
    parser.add_argument("--max-images", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()

    sys.path.insert(0, str(args.open_flamingo / "open_flamingo" / "train"))
    import braceexpand
    import webdataset as wds

    # OpenFlamingo's open_flamingo/train/data.py, by name: an import statement would be sorted as
    # first- or third-party depending on whether a data/ folder exists here (`make demo` makes one).
    of_data = importlib.import_module("data")

    urls = list(braceexpand.braceexpand(args.tars))
    samples = list(
        wds.DataPipeline(
            wds.SimpleShardList(urls), of_data.tarfile_to_samples_nothrow, wds.to_tuple("json")
        )
    )
    texts = [" ".join(json.loads(s[0])["text_list"]) for s in samples]
    tokenizer = build_tokenizer(texts)
    image_processor = build_image_processor()

    outcomes, failures = check_samples(of_data, samples, tokenizer, image_processor, args)
    print(f"{len(samples)} samples read from {len(urls)} tar(s) by tarfile_to_samples_nothrow")
    print("preprocess_interleaved:", dict(outcomes))

    batches, expected = check_loader(
        of_data, args, image_processor, tokenizer, outcomes["accepted"]
    )
    print(f"get_mmc4_dataset: {batches} batch(es) of {args.batch_size} (expected {expected})")
    if failures:
        print(f"{len(failures)} unexpected error(s), e.g. {failures[:3]}")
    ok = not failures and outcomes["accepted"] > 0 and batches == expected
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
