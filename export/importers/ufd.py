"""UniversalFakeDetect's released linear probe on OpenAI's CLIP ViT-L/14, served as its authors ran it."""

from __future__ import annotations

import argparse
from pathlib import Path

from export.clip import inspect_checkpoint, load_encoder
from export.importers import Importer
from export.importers.common import ReleasedHead, ReleasedProbe, add_output_arguments, head_path, read_linear, require_file, write_imported

ARCH = "ViT-L-14"
PAPER = "Ojha et al., Towards Universal Fake Image Detectors that Generalize Across Generative Models (CVPR 2023), seed 002"
#: sha256 of OpenAI's ViT-L-14.pt (the directory name in its download URL, listed in open_clip's registry).
OPENAI_VIT_L14_SHA256 = "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836"

DESCRIPTION = f"""\
Serve UniversalFakeDetect (UFD) from its released files, as its own validate.py
runs it (WisconsinAIVision/UniversalFakeDetect, MIT licence).
Paper: {PAPER}.

  backbone    OpenAI CLIP ViT-L/14 image encoder, QuickGELU, encode_image: the 768-d
              projected feature, not normalised
  head        the released nn.Linear(768, 1) (pretrained_weights/fc_weights.pth), sigmoid;
              trained by the authors on ProGAN images (ForenSynths training set, 20 classes)
  preprocess  ufd: CenterCrop(224) at native resolution, no resize (smaller images are
              zero-padded, as torchvision does), ToTensor, CLIP mean/std; no JPEG draft decoding
  threshold   0.5, the paper's (it reports accuracy at 0.5), recorded as uncalibrated
              (calibration.threshold_source = paper)

Files:
  --fc               fc_weights.pth from the UFD repository (pretrained_weights/fc_weights.pth).
                     A copy ships with this project: tests/fixtures/ufd/fc_weights.pth (MIT).
  --clip-checkpoint  OpenAI's ViT-L-14.pt: the TorchScript file that OpenAI's clip package (and so
                     UFD's clip.load) downloads; its URL is open_clip.get_pretrained_url("ViT-L-14",
                     "openai") and its sha256 {OPENAI_VIT_L14_SHA256}.
                     A state dict of OpenAI's layout (with input_resolution/context_length/vocab_size)
                     is recognised too; for another conversion of OpenAI's weights add --openai-weights.

Example:
  python -m export import ufd bundles/ufd --clip-checkpoint ViT-L-14.pt --fc fc_weights.pth
  python -m worker --bundle bundles/ufd ...

Recalibrate the 0.5 threshold for your target FPR on your own validation images
(real and fake, UniversalFakeDetect layout), without retraining:
  python -m export embed DATA emb-ufd --pretrained ViT-L-14.pt --preprocess ufd
  python -m export bundle bundles/ufd-cal --data emb-ufd --head bundles/ufd.head.pt --pretrained ViT-L-14.pt

What is reported for this probe, to check a deployment against (UniversalFakeDetect's 19 test
generators, trained on ProGAN): mean accuracy 81.38 % and mean AP 93.38 % (GenDet, Tables 2 and 1,
row "Ojha et al."). `python -m export eval bundles/ufd DATA` measures the same metrics.
"""


class UFDImporter(Importer):
    name = "ufd"
    summary = "UniversalFakeDetect's released linear probe on OpenAI CLIP ViT-L/14 (ufd preprocessing, threshold 0.5)"
    description = DESCRIPTION

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_output_arguments(parser, default_name="ufd")
        parser.add_argument("--clip-checkpoint", type=Path, required=True, metavar="PATH", help="OpenAI's CLIP ViT-L/14 weights (ViT-L-14.pt).")
        parser.add_argument("--fc", type=Path, required=True, metavar="PATH", help="UFD's released probe, fc_weights.pth.")
        parser.add_argument(
            "--openai-weights",
            action="store_true",
            help="--clip-checkpoint is OpenAI's ViT-L/14 in a layout that does not show it (e.g. converted on the HF hub).",
        )

    def run(self, args: argparse.Namespace) -> int:
        ckpt = require_file(args.clip_checkpoint, "--clip-checkpoint")
        fc = read_linear(require_file(args.fc, "--fc"), "--fc")
        facts, _ = inspect_checkpoint(ckpt)  # refuse before building ViT-L/14 (seconds, gigabytes) from the wrong file
        if facts.openai_evidence is None and not args.openai_weights:
            raise SystemExit(
                f"--clip-checkpoint {ckpt} is not recognisably OpenAI's CLIP (not a TorchScript archive of OpenAI's layout, no OpenAI state-dict keys, "
                "sha256 not one of OpenAI's releases). UFD's probe was trained on OpenAI's ViT-L/14 features; pass OpenAI's ViT-L-14.pt, "
                "or --openai-weights if this file is a conversion of it"
            )
        encoder, preprocess, dim = load_encoder(ARCH, str(ckpt), assume_openai=args.openai_weights, preprocess_mode="ufd")
        if fc.in_features != dim:
            raise SystemExit(f"--fc {args.fc} expects {fc.in_features}-d features; {ARCH}'s embedding is {dim}-d")
        head = ReleasedHead(
            "linear-probe",
            PAPER,
            ReleasedProbe(fc, normalize=False),
            {
                "by": "the paper's authors (WisconsinAIVision/UniversalFakeDetect, pretrained_weights/fc_weights.pth, MIT)",
                "trained_on": "ProGAN real/fake images (ForenSynths training set, 20 classes), CLIP ViT-L/14 frozen",
                "forward": "sigmoid(fc(encode_image(x))), embedding not normalised",
            },
        )
        write_imported(
            args,
            encoder=encoder,
            preprocess=preprocess,
            dim=dim,
            architecture=ARCH,
            pretrained=str(ckpt),
            head=head,
            released_files={"--fc": args.fc, "--clip-checkpoint": ckpt},
            paper_threshold_note="threshold 0.5 is UniversalFakeDetect's own (validate.py reports accuracy at 0.5); it is not calibrated on your data",
            recalibrate_hint=(
                f"recalibrate on your data: python -m export embed DATA EMB --pretrained {ckpt} --preprocess ufd && "
                f"python -m export bundle OUT --data EMB --head {head_path(args)} --pretrained {ckpt}"
            ),
        )
        return 0


IMPORTER = UFDImporter()
